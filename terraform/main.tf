# connscale: a chat fleet that scales on established TCP connections.
# Files: network.tf (security groups, ALB), fleet.tf (launch template, group, hook, warm pool),
# scaling.tf (alarms, policies, schedules), redis.tf, iam.tf, dashboard.tf, outputs.tf.

locals {
  tags = merge(var.tags, { "connscale:fleet" = var.name })
  # The scale-out alarm compares the group average with the first step's lower bound; AWS step
  # bounds are relative to that threshold.
  step_bounds = [for s in var.scale_out_steps : {
    lower      = s.lower - var.scale_out_threshold
    upper      = s.upper == null ? null : s.upper - var.scale_out_threshold
    adjustment = s.adjustment
  }]
  https = var.certificate_arn != ""
}

data "aws_region" "current" {}
data "aws_caller_identity" "current" {}
