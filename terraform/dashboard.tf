resource "aws_cloudwatch_dashboard" "fleet" {
  dashboard_name = var.name
  dashboard_body = jsonencode({
    widgets = [
      {
        type = "metric", x = 0, y = 0, width = 12, height = 6
        properties = {
          title   = "Connections per instance"
          region  = data.aws_region.current.name
          view    = "timeSeries"
          metrics = [[{ expression = "SEARCH('{${var.metric_namespace},AutoScalingGroupName,InstanceId} MetricName=\"${var.metric_name}\" AutoScalingGroupName=\"${var.name}\"', 'Average', 60)", id = "per_instance" }]]
        }
      },
      {
        type = "metric", x = 12, y = 0, width = 12, height = 6
        properties = {
          title   = "Group average vs thresholds"
          region  = data.aws_region.current.name
          metrics = [[var.metric_namespace, var.metric_name, "AutoScalingGroupName", var.name, { stat = "Average" }]]
          annotations = {
            horizontal = [
              { label = "scale out", value = var.scale_out_threshold },
              { label = "scale in", value = var.scale_in_threshold },
              { label = "node cap", value = var.node_cap },
            ]
          }
        }
      },
      {
        type = "metric", x = 0, y = 6, width = 24, height = 6
        properties = {
          title  = "Desired vs in service"
          region = data.aws_region.current.name
          metrics = [
            ["AWS/AutoScaling", "GroupDesiredCapacity", "AutoScalingGroupName", var.name],
            ["AWS/AutoScaling", "GroupInServiceInstances", "AutoScalingGroupName", var.name],
            ["AWS/AutoScaling", "GroupPendingInstances", "AutoScalingGroupName", var.name],
          ]
        }
      },
    ]
  })
}
