# Only with chat-node (local.chat): a team's own service brings whatever it needs.
resource "aws_security_group" "redis" {
  count       = local.chat ? 1 : 0
  name        = "${var.name}-redis"
  description = "connscale ${var.name}: Redis from the chat nodes only"
  vpc_id      = var.vpc_id
  tags        = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "redis_from_nodes" {
  count                        = local.chat ? 1 : 0
  security_group_id            = aws_security_group.redis[0].id
  description                  = "Redis from chat nodes"
  from_port                    = 6379
  to_port                      = 6379
  ip_protocol                  = "tcp"
  referenced_security_group_id = aws_security_group.nodes.id
}

resource "aws_elasticache_subnet_group" "redis" {
  count      = local.chat ? 1 : 0
  name       = var.name
  subnet_ids = var.subnet_ids
  tags       = local.tags
}

resource "aws_kms_key" "redis" {
  count               = local.chat ? 1 : 0
  description         = "connscale ${var.name}: Redis at-rest encryption"
  enable_key_rotation = true
  tags                = local.tags
}

resource "aws_elasticache_replication_group" "redis" {
  count                      = local.chat ? 1 : 0
  replication_group_id       = var.name
  description                = "connscale ${var.name}: chat fan-out, presence and recovery streams"
  engine                     = "redis"
  engine_version             = "7.1"
  node_type                  = var.redis_node_type
  num_cache_clusters         = 2
  automatic_failover_enabled = true
  multi_az_enabled           = true
  port                       = 6379
  subnet_group_name          = aws_elasticache_subnet_group.redis[0].name
  security_group_ids         = [aws_security_group.redis[0].id]
  at_rest_encryption_enabled = true
  kms_key_id                 = aws_kms_key.redis[0].arn
  transit_encryption_enabled = true
  auth_token                 = var.redis_auth_token
  snapshot_retention_limit   = 1
  auto_minor_version_upgrade = true
  tags                       = local.tags
}
