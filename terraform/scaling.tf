# The policy file's scale-out steps and slow scale-in, as CloudWatch alarms and Auto Scaling
# policies, for teams that run without the connscale controller (or as its safety net).

resource "aws_autoscaling_policy" "scale_out" {
  name                      = "${var.name}-scale-out"
  autoscaling_group_name    = aws_autoscaling_group.fleet.name
  policy_type               = "StepScaling"
  adjustment_type           = "ChangeInCapacity"
  metric_aggregation_type   = "Average"
  estimated_instance_warmup = var.instance_warmup

  dynamic "step_adjustment" {
    for_each = local.step_bounds
    content {
      metric_interval_lower_bound = step_adjustment.value.lower
      metric_interval_upper_bound = step_adjustment.value.upper
      scaling_adjustment          = step_adjustment.value.adjustment
    }
  }
}

resource "aws_autoscaling_policy" "scale_in" {
  name                   = "${var.name}-scale-in"
  autoscaling_group_name = aws_autoscaling_group.fleet.name
  policy_type            = "SimpleScaling"
  adjustment_type        = "ChangeInCapacity"
  scaling_adjustment     = -var.scale_in_adjustment
  cooldown               = var.scale_in_cooldown
}

resource "aws_cloudwatch_metric_alarm" "high" {
  alarm_name          = "${var.name}-connections-high"
  alarm_description   = "Average established connections per instance at or above the scale-out threshold"
  namespace           = var.metric_namespace
  metric_name         = var.metric_name
  dimensions          = { AutoScalingGroupName = aws_autoscaling_group.fleet.name }
  statistic           = "Average"
  period              = var.scale_out_period
  evaluation_periods  = var.scale_out_evaluation_periods
  datapoints_to_alarm = var.scale_out_evaluation_periods
  threshold           = var.scale_out_threshold
  comparison_operator = "GreaterThanOrEqualToThreshold"
  treat_missing_data  = "missing"
  alarm_actions       = [aws_autoscaling_policy.scale_out.arn]
  tags                = local.tags
}

resource "aws_cloudwatch_metric_alarm" "low" {
  alarm_name          = "${var.name}-connections-low"
  alarm_description   = "Average established connections per instance at or below the scale-in threshold"
  namespace           = var.metric_namespace
  metric_name         = var.metric_name
  dimensions          = { AutoScalingGroupName = aws_autoscaling_group.fleet.name }
  statistic           = "Average"
  period              = var.scale_in_period
  evaluation_periods  = var.scale_in_evaluation_periods
  datapoints_to_alarm = var.scale_in_evaluation_periods
  threshold           = var.scale_in_threshold
  comparison_operator = "LessThanOrEqualToThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_autoscaling_policy.scale_in.arn]
  tags                = local.tags
}

resource "aws_autoscaling_schedule" "start" {
  for_each               = { for s in var.schedules : s.name => s }
  scheduled_action_name  = "${each.key}-start"
  autoscaling_group_name = aws_autoscaling_group.fleet.name
  recurrence             = each.value.start_recurrence
  time_zone              = each.value.time_zone
  min_size               = each.value.min_size
  max_size               = var.max_size
  desired_capacity       = each.value.desired_capacity == null ? -1 : each.value.desired_capacity
}

resource "aws_autoscaling_schedule" "end" {
  for_each               = { for s in var.schedules : s.name => s }
  scheduled_action_name  = "${each.key}-end"
  autoscaling_group_name = aws_autoscaling_group.fleet.name
  recurrence             = each.value.end_recurrence
  time_zone              = each.value.time_zone
  min_size               = var.min_size
  max_size               = var.max_size
  desired_capacity       = -1
}
