# ---------------------------------------------------------------------------------------------
# Deployment. These are yours to set.
# ---------------------------------------------------------------------------------------------

variable "name" {
  description = "Name prefix for every resource (the Auto Scaling group, ALB, target group and Redis replication group are named after it)."
  type        = string
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}$", var.name))
    error_message = "name must be 2-31 lowercase letters, digits or dashes, starting with a letter."
  }
  # The ALB, target group and ElastiCache replication group refuse these names.
  validation {
    condition     = !endswith(var.name, "-") && !strcontains(var.name, "--")
    error_message = "name must not end with a dash or contain two dashes in a row (the ALB, target group and Redis replication group names refuse them)."
  }
  validation {
    condition     = !startswith(var.name, "internal-")
    error_message = "name must not start with \"internal-\" (ALB names refuse it)."
  }
}

variable "vpc_id" {
  description = "VPC the fleet, the load balancer and Redis live in."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets for the instances and Redis (two or more, in different AZs)."
  type        = list(string)
  validation {
    condition     = length(var.subnet_ids) >= 2
    error_message = "Give at least two subnets in different availability zones."
  }
}

variable "public_subnet_ids" {
  description = "Public subnets for the internet-facing load balancer (two or more)."
  type        = list(string)
  validation {
    condition     = length(var.public_subnet_ids) >= 2
    error_message = "Give at least two public subnets in different availability zones."
  }
}

variable "ami_id" {
  description = "AMI for the chat nodes (Amazon Linux 2023 or Debian 12; user data installs the binaries)."
  type        = string
}

variable "instance_type" {
  description = "Instance type. Size it with `loadtest capacity` so node_cap matches it."
  type        = string
  default     = "c7g.large"
}

variable "release_url" {
  description = "HTTPS base URL where scripts/release's dist/ files (SHA256SUMS, the .debs, the tarball) are served, for the AMI's architecture."
  type        = string
  validation {
    condition     = startswith(var.release_url, "https://")
    error_message = "release_url must be an https:// URL."
  }
}

variable "service" {
  description = <<-EOT
    Your own service instead of chat-node (null: chat-node and its Redis). The nodes then get the
    connscale agent only; the AMI or `install` brings the service, and no Redis is created.
      unit      systemd unit that serves `port` (e.g. "myapp.service", or "myapp.socket")
      port      its port: the target group's traffic port (listen on 0.0.0.0 / [::])
      install   shell run as root on the first boot before the unit starts (e.g. apt-get install,
                a container pull); "" when the AMI has it. Not a place for secrets: user data is
                readable with ec2:DescribeInstanceAttribute.
      drain_url null: on scale-in the agent closes the remaining connections itself after
                drain_grace, spread over the rest of the drain (CAP_NET_ADMIN drop-in installed);
                a URL on the node (http://127.0.0.1:PORT/...): the agent POSTs it, with the
                api_token as bearer token, and waits for the port to empty.
  EOT
  type = object({
    unit      = string
    port      = number
    install   = optional(string, "")
    drain_url = optional(string)
  })
  default = null
  validation {
    condition     = var.service == null ? true : can(regex("^[A-Za-z0-9:_.@-]+[.](service|socket)$", var.service.unit))
    error_message = "service.unit must be a systemd unit name ending in .service or .socket, e.g. \"myapp.service\"."
  }
  validation {
    condition     = var.service == null ? true : (var.service.port >= 1 && var.service.port <= 65535 && floor(var.service.port) == var.service.port)
    error_message = "service.port must be a whole number between 1 and 65535."
  }
  validation {
    condition     = var.service == null ? true : (var.service.drain_url == null ? true : can(regex("^http://(127[.]0[.]0[.]1|localhost|\\[::1\\]):[0-9]+/", var.service.drain_url)))
    error_message = "service.drain_url must be an http:// URL on the node itself (http://127.0.0.1:PORT/path), or null for the agent to close the connections."
  }
}

variable "chat_port" {
  description = "Port chat-node listens on (the target group's traffic port)."
  type        = number
  default     = 3000
}

variable "health_port" {
  description = "Port the connscale agent serves /health on (the target group's health check port)."
  type        = number
  default     = 9100
}

variable "allowed_cidrs" {
  description = "CIDR blocks allowed to reach the load balancer."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "certificate_arn" {
  description = "ACM certificate for an HTTPS listener. Empty: HTTP only (for trials; browsers need wss:// in production)."
  type        = string
  default     = ""
}

variable "load_balancing_algorithm" {
  description = "round_robin, or least_outstanding_requests (counts HTTP requests, not websocket connections)."
  type        = string
  default     = "round_robin"
  validation {
    condition     = contains(["round_robin", "least_outstanding_requests"], var.load_balancing_algorithm)
    error_message = "load_balancing_algorithm must be round_robin or least_outstanding_requests."
  }
}

variable "drain_grace" {
  description = "Seconds a scale-in victim, out of the ALB, waits for its clients to leave by themselves before chat-node is told to drain (policy scale_in.drain_grace). It is billed meanwhile: fewer forced reconnects for a little more instance time. Must fit drain_timeout (drain_grace + 270 at least)."
  type        = number
  default     = 1800
  validation {
    condition     = var.drain_grace >= 0 && var.drain_grace <= 2700
    error_message = "drain_grace must be between 0 and 2700 seconds (with the drain after it, it must fit the ALB's deregistration delay, at most 3600)."
  }
}

variable "drain_grace_until_below" {
  description = "The grace ends early once fewer connections than this remain on the victim (policy scale_in.drain_grace_until_below; 0: the grace runs its full length)."
  type        = number
  default     = 2000
  validation {
    condition     = var.drain_grace_until_below >= 0
    error_message = "drain_grace_until_below must be 0 or more."
  }
}

variable "drain_timeout" {
  description = "Seconds a scale-in victim may take to drain in all, its grace included: the agent's drain gets drain_timeout - 30, the ALB's deregistration delay drain_timeout + deregistration_margin, the termination hook's heartbeat timeout drain_timeout."
  type        = number
  default     = 2070
  validation {
    condition     = var.drain_timeout >= 60 && var.drain_timeout <= 3000
    error_message = "drain_timeout must be between 60 and 3000 seconds (the agent gets drain_timeout - 30; the ALB's deregistration delay, drain_timeout + deregistration_margin, may not pass 3600)."
  }
}

variable "deregistration_margin" {
  description = "Seconds the ALB's deregistration delay exceeds drain_timeout, so the ALB never cuts a drain short (it ends early once the target has no connections)."
  type        = number
  default     = 60
  validation {
    condition     = var.deregistration_margin >= 30 && var.deregistration_margin <= 600
    error_message = "deregistration_margin must be between 30 and 600 seconds."
  }
}

variable "install_timeout" {
  description = "Seconds a launching instance may take to install and start its services before the launch hook ABANDONs it (30-7200)."
  type        = number
  default     = 900
  validation {
    condition     = var.install_timeout >= 30 && var.install_timeout <= 7200
    error_message = "install_timeout must be between 30 and 7200 seconds (the lifecycle hook's heartbeat range)."
  }
}

variable "redis_node_type" {
  description = "ElastiCache node type for the pub/sub broker."
  type        = string
  default     = "cache.t4g.small"
}

variable "redis_auth_token" {
  description = "Redis AUTH token: 16-128 characters, letters, digits and only these others: ! & # $ ^ < > - (ElastiCache's rule). Keep it in a secret store. Required with chat-node; leave it null with your own `service` (no Redis is created)."
  type        = string
  sensitive   = true
  default     = null
  validation {
    # ElastiCache CreateReplicationGroup AuthToken: printable ASCII, 16-128 characters, "the only
    # permitted printable special characters are !, &, #, $, ^, <, >, and -".
    condition     = var.redis_auth_token == null ? true : can(regex("^[A-Za-z0-9!&#$^<>-]{16,128}$", var.redis_auth_token))
    error_message = "redis_auth_token must be 16 to 128 characters: letters, digits and only ! & # $ ^ < > - (ElastiCache refuses any other character)."
  }
}

variable "api_token" {
  description = "Bearer token web back ends use for chat-node's /api/broadcast and the agent's drain call."
  type        = string
  sensitive   = true
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}

# ---------------------------------------------------------------------------------------------
# Scaling. `connscale export terraform --out terraform.tfvars.json` writes exactly these from
# the policy file: do not edit them by hand, edit the policy and export again.
# ---------------------------------------------------------------------------------------------

variable "min_size" {
  description = "Group minimum (policy group.min_size)."
  type        = number
}

variable "max_size" {
  description = "Group maximum (policy group.max_size)."
  type        = number
  validation {
    condition     = var.max_size >= 1
    error_message = "max_size must be at least 1."
  }
}

variable "node_cap" {
  description = "Connections one node holds within its SLO (policy group.node_cap); the agent's /health turns 503 here."
  type        = number
}

variable "metric_namespace" {
  description = "CloudWatch namespace of the TCPconnections metric (policy metric.namespace)."
  type        = string
  default     = "connscale"
}

variable "metric_name" {
  description = "CloudWatch metric name (policy metric.name)."
  type        = string
  default     = "TCPconnections"
}

variable "agent_publish_period" {
  description = "Seconds per statistic set the agent publishes (10 for the high-resolution scale-out alarm)."
  type        = number
  default     = 10
  validation {
    condition     = contains([1, 5, 10, 30, 60], var.agent_publish_period)
    error_message = "agent_publish_period must be 1, 5, 10, 30 or 60."
  }
}

variable "scale_out_threshold" {
  description = "Group average connections per instance that raises the scale-out alarm (first step's lower bound)."
  type        = number
}

variable "scale_out_period" {
  description = "Scale-out alarm period in seconds (10 or 30 need the agent's high-resolution metric)."
  type        = number
  validation {
    condition     = contains([10, 30], var.scale_out_period) || var.scale_out_period % 60 == 0
    error_message = "scale_out_period must be 10, 30 or a multiple of 60."
  }
}

variable "scale_out_evaluation_periods" {
  description = "Periods the scale-out alarm evaluates (policy scale_out.datapoints)."
  type        = number
}

variable "scale_out_steps" {
  description = "Step adjustments in absolute connections per instance: [lower, upper) → add. The last has no upper."
  type = list(object({
    lower      = number
    upper      = optional(number)
    adjustment = number
  }))
  validation {
    condition     = length(var.scale_out_steps) >= 1
    error_message = "Give at least one scale-out step."
  }
}

variable "instance_warmup" {
  description = "Seconds a new instance counts toward capacity but not the metric (estimated and default instance warmup)."
  type        = number
}

variable "scale_in_threshold" {
  description = "Group average at or below which the scale-in alarm fires."
  type        = number
}

variable "scale_in_period" {
  description = "Scale-in alarm period in seconds."
  type        = number
}

variable "scale_in_evaluation_periods" {
  description = "Periods the average must stay low (policy scale_in.sustain / scale_in_period)."
  type        = number
}

variable "scale_in_adjustment" {
  description = "Instances the fallback alarm removes per scale-in (policy scale_in.step, at most 1: the alarm cannot check what the rest would carry)."
  type        = number
}

variable "scale_in_cooldown" {
  description = "Seconds after a scale-in before the next (policy scale_in.cooldown)."
  type        = number
}

variable "schedules" {
  description = "Pre-warm windows: raise min (and desired) at start_recurrence, restore at end_recurrence (cron, in time_zone)."
  type = list(object({
    name             = string
    start_recurrence = string
    end_recurrence   = string
    time_zone        = string
    min_size         = number
    desired_capacity = optional(number)
  }))
  default = []
}

variable "warm_pool" {
  description = "Warm pool (null for none): min_size, max_group_prepared_capacity (-1 = unset), pool_state, reuse_on_scale_in."
  type = object({
    min_size                    = number
    max_group_prepared_capacity = number
    pool_state                  = string
    reuse_on_scale_in           = bool
  })
  default = null
  validation {
    condition     = var.warm_pool == null || contains(["Stopped", "Running", "Hibernated"], try(var.warm_pool.pool_state, ""))
    error_message = "warm_pool.pool_state must be Stopped, Running or Hibernated."
  }
}
