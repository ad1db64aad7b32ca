output "lb_dns_name" {
  description = "Point clients (and your DNS) here."
  value       = aws_lb.this.dns_name
}

output "autoscaling_group_name" {
  description = "The group `connscale run --group` operates."
  value       = aws_autoscaling_group.fleet.name
}

output "target_group_arn" {
  description = "The chat target group."
  value       = aws_lb_target_group.chat.arn
}

output "redis_primary_endpoint" {
  description = "Redis primary endpoint (TLS, AUTH); null with your own service."
  value       = one(aws_elasticache_replication_group.redis[*].primary_endpoint_address)
}

output "node_role_arn" {
  description = "The instances' role (agent permissions)."
  value       = aws_iam_role.node.arn
}

output "controller_policy_json" {
  description = "Least-privilege policy for the role that runs the connscale controller."
  value       = data.aws_iam_policy_document.controller.json
}

output "dashboard_name" {
  description = "CloudWatch dashboard with per-instance connections, group average and capacity."
  value       = aws_cloudwatch_dashboard.fleet.dashboard_name
}

output "lease_table_name" {
  description = "The DynamoDB table of the control loop's lease (`connscale run --lease-table`)."
  value       = aws_dynamodb_table.lease.name
}
