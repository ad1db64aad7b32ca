# Where the control loop runs: a dedicated group of one small instance (`connscale run` under
# connscale-controller.service), replaced by Auto Scaling if it fails. Not on every chat node:
# the lease is still a tag (no compare-and-set, eventually consistent reads), so the fewer loops
# contend for it the less likely two believe they hold it; one loop per node would be the worst
# case. A dedicated instance also keeps the controller's permissions off the chat nodes, and its
# stop (SIGTERM) releases the lease for the replacement at once.
#
# Set controller_policy to the policy file's text (the same file `connscale export terraform`
# read) to create it; null (the default) leaves the control loop to you (or to the alarms alone).

variable "controller_policy" {
  description = "The connscale policy file's TOML text for the controller instance. Null: no controller group."
  type        = string
  default     = null
}

variable "controller_instance_type" {
  description = "Instance type of the controller (one instance; the loop needs little). Same architecture as ami_id."
  type        = string
  default     = "t4g.micro"
}

locals {
  controller = var.controller_policy == null ? 0 : 1
}

resource "aws_iam_role" "controller" {
  count              = local.controller
  name               = "${var.name}-controller"
  assume_role_policy = data.aws_iam_policy_document.assume_ec2.json
  tags               = local.tags
}

resource "aws_iam_role_policy" "controller" {
  count  = local.controller
  name   = "connscale-controller"
  role   = aws_iam_role.controller[0].id
  policy = data.aws_iam_policy_document.controller.json
}

resource "aws_iam_instance_profile" "controller" {
  count = local.controller
  name  = "${var.name}-controller"
  role  = aws_iam_role.controller[0].name
  tags  = local.tags
}

resource "aws_security_group" "controller" {
  count       = local.controller
  name        = "${var.name}-controller"
  description = "connscale ${var.name}: the control loop (outbound HTTPS only)"
  vpc_id      = var.vpc_id
  tags        = local.tags
}

resource "aws_vpc_security_group_egress_rule" "controller_https" {
  count             = local.controller
  security_group_id = aws_security_group.controller[0].id
  description       = "AWS APIs (Auto Scaling, CloudWatch, EC2) and the release download"
  from_port         = 443
  to_port           = 443
  ip_protocol       = "tcp"
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_launch_template" "controller" {
  count         = local.controller
  name_prefix   = "${var.name}-controller-"
  image_id      = var.ami_id
  instance_type = var.controller_instance_type
  tags          = local.tags

  iam_instance_profile {
    arn = aws_iam_instance_profile.controller[0].arn
  }

  vpc_security_group_ids = [aws_security_group.controller[0].id]

  metadata_options {
    http_tokens                 = "required"
    http_endpoint               = "enabled"
    http_put_response_hop_limit = 1
  }

  block_device_mappings {
    device_name = "/dev/xvda"
    ebs {
      volume_size = 8
      volume_type = "gp3"
      encrypted   = true
    }
  }

  user_data = base64encode(templatefile("${path.module}/templates/controller_user_data.sh.tftpl", {
    release_url    = var.release_url
    release_sha256 = var.release_sha256
    group          = var.name
    policy         = coalesce(var.controller_policy, "")
  }))

  tag_specifications {
    resource_type = "instance"
    tags          = merge(local.tags, { Name = "${var.name}-controller" })
  }
}

resource "aws_autoscaling_group" "controller" {
  count                     = local.controller
  name                      = "${var.name}-controller"
  min_size                  = 1
  max_size                  = 1
  desired_capacity          = 1
  vpc_zone_identifier       = var.subnet_ids
  health_check_type         = "EC2"
  health_check_grace_period = 60
  wait_for_capacity_timeout = "0"

  launch_template {
    id      = aws_launch_template.controller[0].id
    version = aws_launch_template.controller[0].latest_version
  }

  dynamic "tag" {
    for_each = merge(local.tags, { Name = "${var.name}-controller" })
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }
}
