# A complete deployment: the module with the scaling variables read from the policy export.
#   connscale export terraform --policy my-policy.toml --out policy.json
#   terraform init && terraform apply -var policy_file=my-policy.toml
provider "aws" {
  region = var.region
}

locals {
  # Written by `connscale export terraform`: never edit by hand.
  policy = jsondecode(file("${path.module}/policy.json"))
}

module "connscale" {
  source = "../.."

  name              = var.name
  vpc_id            = var.vpc_id
  subnet_ids        = var.subnet_ids
  public_subnet_ids = var.public_subnet_ids
  ami_id            = var.ami_id
  instance_type     = var.instance_type
  release_url       = var.release_url
  release_sha256    = var.release_sha256
  certificate_arn   = var.certificate_arn
  redis_auth_token  = var.redis_auth_token
  api_token         = var.api_token
  # null: chat-node and its Redis; your own service instead, e.g.
  #   service = { unit = "myapp.service", port = 8080, install = "apt-get install -y myapp" }
  service = var.service

  min_size                     = local.policy.min_size
  max_size                     = local.policy.max_size
  node_cap                     = local.policy.node_cap
  metric_namespace             = local.policy.metric_namespace
  metric_name                  = local.policy.metric_name
  agent_publish_period         = local.policy.agent_publish_period
  scale_out_threshold          = local.policy.scale_out_threshold
  scale_out_period             = local.policy.scale_out_period
  scale_out_evaluation_periods = local.policy.scale_out_evaluation_periods
  scale_out_steps              = local.policy.scale_out_steps
  instance_warmup              = local.policy.instance_warmup
  scale_in_threshold           = local.policy.scale_in_threshold
  scale_in_period              = local.policy.scale_in_period
  scale_in_evaluation_periods  = local.policy.scale_in_evaluation_periods
  scale_in_adjustment          = local.policy.scale_in_adjustment
  scale_in_cooldown            = local.policy.scale_in_cooldown
  schedules                    = local.policy.schedules
  warm_pool                    = local.policy.warm_pool
  drain_grace                  = local.policy.drain_grace
  drain_grace_until_below      = local.policy.drain_grace_until_below
  drain_timeout                = local.policy.drain_timeout

  # The same policy file drives the control loop on its own instance (null: none is started,
  # and the fallback alarms above scale the group alone).
  controller_policy = var.policy_file == null ? null : file(var.policy_file)
}

variable "policy_file" {
  description = "Path of the policy TOML that policy.json was exported from, for the controller instance (null: no controller)."
  type        = string
  default     = null
}

variable "region" {
  description = "AWS region."
  type        = string
}

variable "name" {
  description = "Fleet name."
  type        = string
}

variable "vpc_id" {
  description = "VPC id."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets."
  type        = list(string)
}

variable "public_subnet_ids" {
  description = "Public subnets for the load balancer."
  type        = list(string)
}

variable "ami_id" {
  description = "AMI."
  type        = string
}

variable "instance_type" {
  description = "Instance type."
  type        = string
}

variable "release_url" {
  description = "Base URL of scripts/release's dist/ files."
  type        = string
}

variable "release_sha256" {
  description = "sha256 of dist/SHA256SUMS (scripts/release prints it)."
  type        = string
}

variable "certificate_arn" {
  description = "ACM certificate ARN (empty for HTTP)."
  type        = string
  default     = ""
}

variable "redis_auth_token" {
  description = "Redis AUTH token (chat-node only; null with your own service)."
  type        = string
  sensitive   = true
  default     = null
}

variable "service" {
  description = "Your own service instead of chat-node (the module's `service`); null: chat-node."
  type = object({
    unit      = string
    port      = number
    install   = optional(string, "")
    drain_url = optional(string)
  })
  default = null
}

variable "api_token" {
  description = "chat-node API token."
  type        = string
  sensitive   = true
}

output "lb_dns_name" {
  description = "Where clients connect."
  value       = module.connscale.lb_dns_name
}

output "controller_policy_json" {
  description = "Attach to the controller's role."
  value       = module.connscale.controller_policy_json
}
