# Least privilege for the instances (the agent) and, separately, for the connscale controller.

data "aws_iam_policy_document" "assume_ec2" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

locals {
  group_arn = "arn:aws:autoscaling:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}:autoScalingGroup:*:autoScalingGroupName/${var.name}"
}

data "aws_iam_policy_document" "node" {
  statement {
    sid       = "PublishOwnMetricOnly"
    actions   = ["cloudwatch:PutMetricData"]
    resources = ["*"] # PutMetricData has no resource ARNs; the namespace condition scopes it.
    condition {
      test     = "StringEquals"
      variable = "cloudwatch:namespace"
      values   = [var.metric_namespace]
    }
  }
  statement {
    # The launch hook (boot script) and the termination hook (drain) of this group only.
    sid       = "LifecycleOwnGroupOnly"
    actions   = ["autoscaling:RecordLifecycleActionHeartbeat", "autoscaling:CompleteLifecycleAction"]
    resources = [local.group_arn]
  }
  statement {
    sid       = "DescribeOwnInstance"
    actions   = ["autoscaling:DescribeAutoScalingInstances"]
    resources = ["*"] # Describe* calls do not support resource-level permissions.
  }
}

resource "aws_iam_role" "node" {
  name               = "${var.name}-node"
  assume_role_policy = data.aws_iam_policy_document.assume_ec2.json
  tags               = local.tags
}

resource "aws_iam_role_policy" "node" {
  name   = "connscale-agent"
  role   = aws_iam_role.node.id
  policy = data.aws_iam_policy_document.node.json
}

resource "aws_iam_instance_profile" "node" {
  name = "${var.name}-node"
  role = aws_iam_role.node.name
  tags = local.tags
}

# For the role that runs `connscale run/plan/apply/status` (attach it yourself: where the
# controller runs is your choice).
data "aws_iam_policy_document" "controller" {
  statement {
    sid = "ReadFleet"
    actions = [
      "autoscaling:DescribeAutoScalingGroups",
      "autoscaling:DescribePolicies",
      "autoscaling:DescribeScheduledActions",
      "autoscaling:DescribeWarmPool",
      "autoscaling:DescribeLifecycleHooks",
      "autoscaling:DescribeScalingActivities",
      "cloudwatch:GetMetricData",
      "cloudwatch:DescribeAlarms",
      "ec2:DescribeInstances",
    ]
    resources = ["*"] # Describe*/Get* calls do not support resource-level permissions.
  }
  statement {
    sid = "ActOnThisGroup"
    actions = [
      "autoscaling:SetDesiredCapacity",
      "autoscaling:TerminateInstanceInAutoScalingGroup",
      "autoscaling:SetInstanceProtection",
      "autoscaling:UpdateAutoScalingGroup",
      "autoscaling:PutWarmPool",
      "autoscaling:DeleteWarmPool",
      "autoscaling:PutScheduledUpdateGroupAction",
      "autoscaling:DeleteScheduledAction",
      "autoscaling:PutScalingPolicy",
      "autoscaling:PutLifecycleHook",
      "autoscaling:CompleteLifecycleAction",
    ]
    resources = [local.group_arn]
  }
  statement {
    # The control loop's lease: item reads and conditional writes on exactly its table
    # (CreateTable only lets `connscale apply` make it where terraform did not).
    sid       = "LeaseTable"
    actions   = ["dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:DescribeTable", "dynamodb:CreateTable"]
    resources = [aws_dynamodb_table.lease.arn]
  }
  statement {
    # The run loop's heartbeat (ControllerHeartbeat), which stands the fallback alarms down.
    sid       = "Heartbeat"
    actions   = ["cloudwatch:PutMetricData"]
    resources = ["*"] # PutMetricData has no resource ARNs; the namespace condition scopes it.
    condition {
      test     = "StringEquals"
      variable = "cloudwatch:namespace"
      values   = [var.metric_namespace]
    }
  }
  statement {
    # The cordon (connscale-cordon, read by the node's agent through IMDS tags): only on this
    # group's instances, and only that one tag key.
    sid       = "CordonTag"
    actions   = ["ec2:CreateTags", "ec2:DeleteTags"]
    resources = ["arn:aws:ec2:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}:instance/*"]
    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/aws:autoscaling:groupName"
      values   = [var.name]
    }
    condition {
      test     = "ForAllValues:StringEquals"
      variable = "aws:TagKeys"
      values   = ["connscale-cordon"]
    }
    # ForAllValues holds for a request without tag keys too, and a DeleteTags without any
    # removes every tag: require the keys.
    condition {
      test     = "Null"
      variable = "aws:TagKeys"
      values   = ["false"]
    }
  }
  statement {
    sid       = "OwnAlarms"
    actions   = ["cloudwatch:PutMetricAlarm", "cloudwatch:DeleteAlarms"]
    resources = ["arn:aws:cloudwatch:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}:alarm:${var.name}-*"]
  }
}
