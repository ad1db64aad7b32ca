# The policy file's scale-out steps and slow scale-in, as CloudWatch alarms and Auto Scaling
# policies: the fallback that scales while no connscale controller runs.

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

# Exactly one actor scales: `connscale run` publishes ControllerHeartbeat {AutoScalingGroupName}
# for every 10 s period until its lease expires. Each alarm compares
# IF(FILL(hb, 0) == 0, conns, <never>): the group average while no heartbeat is seen in the
# period, else a value on the never-breaching side of the threshold (-1 for scale-out,
# threshold + 1 for scale-in). So the alarms act only while no controller holds the lease;
# `connscale apply` creates the same alarms (controller/src/aws/plan.rs). See the README's
# "Scale-in" section for the handover in each direction.
locals {
  heartbeat_metric = "ControllerHeartbeat"
  alarms = {
    high = {
      name        = "${var.name}-connections-high"
      description = "Fallback scale-out: group average at or above the threshold while no connscale controller heartbeat is seen"
      period      = var.scale_out_period
      evaluations = var.scale_out_evaluation_periods
      threshold   = var.scale_out_threshold
      comparison  = "GreaterThanOrEqualToThreshold"
      never       = -1
      missing     = "missing"
      action      = aws_autoscaling_policy.scale_out.arn
    }
    low = {
      name        = "${var.name}-connections-low"
      description = "Fallback scale-in: group average at or below the threshold while no connscale controller heartbeat is seen"
      period      = var.scale_in_period
      evaluations = var.scale_in_evaluation_periods
      threshold   = var.scale_in_threshold
      comparison  = "LessThanOrEqualToThreshold"
      never       = var.scale_in_threshold + 1
      missing     = "notBreaching"
      action      = aws_autoscaling_policy.scale_in.arn
    }
  }
}

resource "aws_cloudwatch_metric_alarm" "fallback" {
  for_each            = local.alarms
  alarm_name          = each.value.name
  alarm_description   = each.value.description
  evaluation_periods  = each.value.evaluations
  datapoints_to_alarm = each.value.evaluations
  threshold           = each.value.threshold
  comparison_operator = each.value.comparison
  treat_missing_data  = each.value.missing
  alarm_actions       = [each.value.action]
  tags                = local.tags

  metric_query {
    id          = "conns"
    return_data = false
    metric {
      namespace   = var.metric_namespace
      metric_name = var.metric_name
      dimensions  = { AutoScalingGroupName = aws_autoscaling_group.fleet.name }
      stat        = "Average"
      period      = each.value.period
    }
  }

  metric_query {
    id          = "hb"
    return_data = false
    metric {
      namespace   = var.metric_namespace
      metric_name = local.heartbeat_metric
      dimensions  = { AutoScalingGroupName = aws_autoscaling_group.fleet.name }
      stat        = "Sum"
      period      = each.value.period
    }
  }

  metric_query {
    id          = "fallback"
    expression  = "IF(FILL(hb, 0) == 0, conns, ${each.value.never})"
    return_data = true
  }
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
