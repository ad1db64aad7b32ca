resource "aws_launch_template" "node" {
  name_prefix   = "${var.name}-"
  image_id      = var.ami_id
  instance_type = var.instance_type
  tags          = local.tags

  iam_instance_profile {
    arn = aws_iam_instance_profile.node.arn
  }

  vpc_security_group_ids = [aws_security_group.nodes.id]

  # IMDSv2 only; instance tags in metadata let the agent read its group name.
  metadata_options {
    http_tokens                 = "required"
    http_endpoint               = "enabled"
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "enabled"
  }

  monitoring {
    enabled = true
  }

  block_device_mappings {
    device_name = "/dev/xvda"
    ebs {
      volume_size = 16
      volume_type = "gp3"
      encrypted   = true
    }
  }

  # No secret in here: only the names of the SSM parameters that hold them (secrets.tf).
  user_data = base64encode(templatefile("${path.module}/templates/user_data.sh.tftpl", {
    release_url                = var.release_url
    release_sha256             = var.release_sha256
    chat_port                  = local.service_port
    health_port                = var.health_port
    node_cap                   = var.node_cap
    redis_url                  = local.chat ? "rediss://${one(aws_elasticache_replication_group.redis[*].primary_endpoint_address)}:6379" : ""
    service_unit               = local.chat ? "" : var.service.unit
    service_install            = local.chat ? "" : base64encode(var.service.install)
    service_drain_url          = local.chat ? "" : (var.service.drain_url == null ? "" : var.service.drain_url)
    close_window               = local.agent_drain_timeout - var.drain_grace
    metric_namespace           = var.metric_namespace
    metric_name                = var.metric_name
    publish_period             = var.agent_publish_period
    hook_name                  = local.drain_hook
    launch_hook_name           = local.launch_hook
    install_timeout            = var.install_timeout
    agent_drain_timeout        = local.agent_drain_timeout
    drain_grace                = var.drain_grace
    drain_grace_until_below    = var.drain_grace_until_below
    hook_heartbeat_timeout     = local.deregistration_delay + var.drain_timeout
    api_token_parameter        = aws_ssm_parameter.api_token.name
    redis_auth_token_parameter = local.chat ? one(aws_ssm_parameter.redis_auth_token[*].name) : ""
    aws_endpoint_url           = ""
  }))

  tag_specifications {
    resource_type = "instance"
    tags          = local.tags
  }
}

locals {
  drain_hook = "connscale-drain"
  # The boot script runs `connscale-agent complete-lifecycle --hook connscale-launch --launched`
  # once the services are up: a warm-pool instance is stopped only after its install finished.
  # Leaving the pool pauses it on this hook again; the agent completes that one.
  launch_hook = "connscale-launch"

  # The order of a scale-in behind the ALB (AWS user guide, "How lifecycle hooks work"): the
  # group first deregisters the victim from the target group and waits out the deregistration
  # delay; only then does the termination hook pause it in Terminating:Wait. The agent sees the
  # Terminated target state at once and drains during that delay, for at most
  # agent_drain_timeout (the user data's `drain_timeout - 30`). The delay must outlast the
  # drain, or the ALB cuts the remaining clients off: drain_timeout + deregistration_margin.
  # The delay ends early once the target has no connections, so a quick drain costs nothing.
  agent_drain_timeout  = var.drain_timeout - 30
  deregistration_delay = var.drain_timeout + var.deregistration_margin

  # chat-node and its Redis, unless the team brings its own service (var.service).
  chat         = var.service == null
  service_port = local.chat ? var.chat_port : var.service.port
}

resource "aws_autoscaling_group" "fleet" {
  name                = var.name
  min_size            = var.min_size
  max_size            = var.max_size
  vpc_zone_identifier = var.subnet_ids
  target_group_arns   = [aws_lb_target_group.chat.arn]
  # EC2, not ELB: the target group's health check is a *capacity* signal (503 when full). With
  # ELB health checks every full node would be terminated and replaced with all its clients.
  health_check_type         = "EC2"
  health_check_grace_period = 60
  default_instance_warmup   = var.instance_warmup
  protect_from_scale_in     = false
  wait_for_capacity_timeout = "0"

  launch_template {
    id      = aws_launch_template.node.id
    version = aws_launch_template.node.latest_version
  }

  instance_maintenance_policy {
    min_healthy_percentage = 100
    max_healthy_percentage = 150
  }

  # Scale-in drain: the agent sees Terminated in IMDS, drains chat-node, then CONTINUEs. The
  # hook is active only after the deregistration delay (see local.deregistration_delay).
  initial_lifecycle_hook {
    name                 = local.drain_hook
    lifecycle_transition = "autoscaling:EC2_INSTANCE_TERMINATING"
    default_result       = "CONTINUE"
    heartbeat_timeout    = var.drain_timeout
  }

  # The warm pool is a block of the group (the provider has no aws_autoscaling_warm_pool).
  dynamic "warm_pool" {
    for_each = var.warm_pool == null ? [] : [var.warm_pool]
    content {
      pool_state                  = warm_pool.value.pool_state
      min_size                    = warm_pool.value.min_size
      max_group_prepared_capacity = warm_pool.value.max_group_prepared_capacity
      instance_reuse_policy {
        reuse_on_scale_in = warm_pool.value.reuse_on_scale_in
      }
    }
  }

  # Launch: the instance waits in Pending:Wait (or Warmed:Pending:Wait) until its boot script
  # says the services are up; an install that fails or hangs is ABANDONed and replaced, never
  # put in service or into the pool half-installed. Leaving the warm pool it waits in
  # Pending:Wait again, until the agent sees the service listening.
  initial_lifecycle_hook {
    name                 = local.launch_hook
    lifecycle_transition = "autoscaling:EC2_INSTANCE_LAUNCHING"
    default_result       = "ABANDON"
    heartbeat_timeout    = var.install_timeout
  }

  enabled_metrics = ["GroupDesiredCapacity", "GroupInServiceInstances", "GroupPendingInstances", "GroupTerminatingInstances"]

  dynamic "tag" {
    for_each = local.tags
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }

  lifecycle {
    # The controller (or the alarms) own desired capacity.
    ignore_changes = [desired_capacity]
    precondition {
      condition     = var.drain_grace + 60 <= local.agent_drain_timeout
      error_message = "drain_grace must leave chat-node's drain a minute inside the agent's drain (drain_timeout - 30): raise drain_timeout to at least drain_grace + 270 (connscale export terraform sets both from the policy)."
    }
    precondition {
      condition     = !local.chat || var.redis_auth_token != null
      error_message = "redis_auth_token is required with chat-node (its Redis needs an AUTH token); with your own service set var.service instead."
    }
  }
}
