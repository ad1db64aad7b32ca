resource "aws_security_group" "alb" {
  name        = "${var.name}-alb"
  description = "connscale ${var.name}: clients to the load balancer"
  vpc_id      = var.vpc_id
  tags        = local.tags

  ingress {
    description = "clients"
    from_port   = local.https ? 443 : 80
    to_port     = local.https ? 443 : 80
    protocol    = "tcp"
    cidr_blocks = var.allowed_cidrs
  }

  egress {
    description     = "to the service and the agent's health check"
    from_port       = min(local.service_port, var.health_port)
    to_port         = max(local.service_port, var.health_port)
    protocol        = "tcp"
    security_groups = [aws_security_group.nodes.id]
  }
}

resource "aws_security_group" "nodes" {
  name        = "${var.name}-nodes"
  description = "connscale ${var.name}: chat nodes"
  vpc_id      = var.vpc_id
  tags        = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "nodes_chat" {
  security_group_id            = aws_security_group.nodes.id
  description                  = "service traffic from the load balancer"
  from_port                    = local.service_port
  to_port                      = local.service_port
  ip_protocol                  = "tcp"
  referenced_security_group_id = aws_security_group.alb.id
}

resource "aws_vpc_security_group_ingress_rule" "nodes_health" {
  security_group_id            = aws_security_group.nodes.id
  description                  = "health checks from the load balancer"
  from_port                    = var.health_port
  to_port                      = var.health_port
  ip_protocol                  = "tcp"
  referenced_security_group_id = aws_security_group.alb.id
}

resource "aws_vpc_security_group_egress_rule" "nodes_https" {
  security_group_id = aws_security_group.nodes.id
  description       = "AWS APIs (CloudWatch, Auto Scaling) and the release download"
  from_port         = 443
  to_port           = 443
  ip_protocol       = "tcp"
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_egress_rule" "nodes_redis" {
  count                        = local.chat ? 1 : 0
  security_group_id            = aws_security_group.nodes.id
  description                  = "Redis pub/sub"
  from_port                    = 6379
  to_port                      = 6379
  ip_protocol                  = "tcp"
  referenced_security_group_id = aws_security_group.redis[0].id
}

resource "aws_lb" "this" {
  name                       = var.name
  load_balancer_type         = "application"
  internal                   = false
  security_groups            = [aws_security_group.alb.id]
  subnets                    = var.public_subnet_ids
  idle_timeout               = 120
  drop_invalid_header_fields = true
  enable_deletion_protection = true
  tags                       = local.tags
}

resource "aws_lb_target_group" "chat" {
  name                          = var.name
  port                          = local.service_port
  protocol                      = "HTTP"
  vpc_id                        = var.vpc_id
  load_balancing_algorithm_type = var.load_balancing_algorithm
  deregistration_delay          = local.deregistration_delay # drain_timeout + margin: see fleet.tf
  tags                          = local.tags

  # The polling transport makes several HTTP requests per session: keep them on one node.
  stickiness {
    type            = "lb_cookie"
    cookie_duration = 86400
    enabled         = true
  }

  # The agent's capacity endpoint: 503 at the node's cap, so full nodes get no new clients.
  health_check {
    port                = tostring(var.health_port)
    path                = "/health"
    protocol            = "HTTP"
    matcher             = "200"
    interval            = 10
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }
}

resource "aws_lb_listener" "https" {
  count             = local.https ? 1 : 0
  load_balancer_arn = aws_lb.this.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  certificate_arn   = var.certificate_arn

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.chat.arn
  }
}

resource "aws_lb_listener" "http" {
  count             = local.https ? 0 : 1
  load_balancer_arn = aws_lb.this.arn
  port              = 80
  protocol          = "HTTP"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.chat.arn
  }
}
