# The node's secrets live in SSM Parameter Store as SecureStrings, never in user data (anyone with
# ec2:DescribeInstanceAttribute, and any local process through IMDS, reads user data). At boot
# connscale-credentials.service reads them with the instance role into /run/connscale/credentials
# (root only, tmpfs) and the units get them as systemd credentials (LoadCredential=).

variable "secrets_kms_key_arn" {
  description = "KMS key ARN for the SecureString parameters. Null: the account's AWS managed key for SSM (alias/aws/ssm)."
  type        = string
  default     = null
}

locals {
  secret_prefix = "/connscale/${var.name}"
  secret_parameters = {
    api_token        = "${local.secret_prefix}/api-token"
    redis_auth_token = "${local.secret_prefix}/redis-auth-token"
  }
  # The parameters that exist (the Redis token only with chat-node): what the nodes may read,
  # and the encryption contexts they may decrypt.
  node_secret_arns = concat([aws_ssm_parameter.api_token.arn], aws_ssm_parameter.redis_auth_token[*].arn)
}

resource "aws_ssm_parameter" "api_token" {
  name        = local.secret_parameters.api_token
  description = "Bearer token for chat-node's /api/broadcast and /api/drain (read by the nodes at boot)."
  type        = "SecureString"
  key_id      = var.secrets_kms_key_arn
  value       = var.api_token
  tags        = local.tags
}

resource "aws_ssm_parameter" "redis_auth_token" {
  count       = local.chat ? 1 : 0
  name        = local.secret_parameters.redis_auth_token
  description = "Redis AUTH token of the fleet's ElastiCache group (read by the nodes at boot)."
  type        = "SecureString"
  key_id      = var.secrets_kms_key_arn
  value       = var.redis_auth_token
  tags        = local.tags
}

data "aws_iam_policy_document" "node_secrets" {
  statement {
    sid       = "ReadOwnSecretsOnly"
    actions   = ["ssm:GetParameter"]
    resources = local.node_secret_arns
  }
  statement {
    # Decrypt only through SSM, only for these parameters (SSM puts the parameter's ARN in
    # the encryption context). With the AWS managed key its ARN is not known before first use,
    # so the key is matched by these conditions rather than by ARN.
    sid       = "DecryptOwnSecretsThroughSsm"
    actions   = ["kms:Decrypt"]
    resources = [coalesce(var.secrets_kms_key_arn, "arn:aws:kms:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}:key/*")]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["ssm.${data.aws_region.current.name}.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "kms:EncryptionContext:PARAMETER_ARN"
      values   = local.node_secret_arns
    }
  }
}

resource "aws_iam_role_policy" "node_secrets" {
  name   = "connscale-secrets"
  role   = aws_iam_role.node.id
  policy = data.aws_iam_policy_document.node_secrets.json
}
