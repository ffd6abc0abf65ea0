# Load balancers.
#
# ALB  https://<hostname>        TLS ends here (ACM), WAF in front, HTTP to tasks:8080
# NLB  <tunnel_hostname>:2222    SSH, TCP pass-through (SSH is end-to-end encrypted)
#      <tunnel_hostname>:6432    PostgreSQL, TCP pass-through (the broker speaks TLS)
#
# SSH and PostgreSQL sessions are long-lived: the NLB idle timeout is raised
# above the broker's session.idle_timeout so the broker, not the load balancer,
# decides when an idle session ends, and deregistration waits for the broker's
# own shutdown grace.

# --- ALB --------------------------------------------------------------------

resource "aws_lb" "https" {
  name               = "${local.name_prefix}-https"
  load_balancer_type = "application"
  internal           = var.internal_load_balancers
  subnets            = var.load_balancer_subnet_ids
  security_groups    = [aws_security_group.alb.id]

  drop_invalid_header_fields = true
  desync_mitigation_mode     = "strictest"
  enable_deletion_protection = var.deletion_protection
  enable_waf_fail_open       = false
  # Web UI live views and session replay use WebSockets.
  idle_timeout = 900

  access_logs {
    bucket  = aws_s3_bucket.access_logs.id
    prefix  = "alb"
    enabled = true
  }

  connection_logs {
    bucket  = aws_s3_bucket.access_logs.id
    prefix  = "alb-connections"
    enabled = true
  }

  tags = local.tags

  depends_on = [aws_s3_bucket_policy.access_logs]
}

resource "aws_lb_target_group" "http" {
  name                 = "${local.name_prefix}-http"
  port                 = local.http_port
  protocol             = "HTTP"
  target_type          = "ip"
  vpc_id               = var.vpc_id
  deregistration_delay = 30

  # /readyz: ready only while the store answers, so a broker that lost its
  # database stops receiving logins (liveness is /healthz in the task).
  health_check {
    path                = "/readyz"
    port                = "traffic-port"
    protocol            = "HTTP"
    matcher             = "200"
    interval            = 15
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }

  tags = local.tags

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_lb_listener" "https" {
  load_balancer_arn = aws_lb.https.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = var.alb_ssl_policy
  certificate_arn   = local.certificate_arn

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.http.arn
  }

  routing_http_response_server_enabled                         = false
  routing_http_response_strict_transport_security_header_value = "max-age=63072000; includeSubDomains"
  routing_http_response_x_content_type_options_header_value    = "nosniff"
  routing_http_response_x_frame_options_header_value           = "DENY"

  tags = local.tags
}

# --- WAF on the ALB -----------------------------------------------------------

resource "aws_wafv2_web_acl" "https" {
  name        = "${local.name_prefix}-https"
  description = "pam ${var.environment}: managed rule sets and a per-IP rate limit in front of the web UI and API"
  scope       = "REGIONAL"
  tags        = local.tags

  default_action {
    allow {}
  }

  rule {
    name     = "rate-limit-per-ip"
    priority = 0

    action {
      block {}
    }

    statement {
      rate_based_statement {
        limit              = var.waf_rate_limit
        aggregate_key_type = "IP"
      }
    }

    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "${local.name_prefix}-rate-limit"
      sampled_requests_enabled   = true
    }
  }

  rule {
    name     = "aws-ip-reputation"
    priority = 10

    override_action {
      none {}
    }

    statement {
      managed_rule_group_statement {
        vendor_name = "AWS"
        name        = "AWSManagedRulesAmazonIpReputationList"
      }
    }

    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "${local.name_prefix}-ip-reputation"
      sampled_requests_enabled   = true
    }
  }

  rule {
    name     = "aws-common"
    priority = 20

    override_action {
      none {}
    }

    statement {
      managed_rule_group_statement {
        vendor_name = "AWS"
        name        = "AWSManagedRulesCommonRuleSet"

        # The pam CLI talks to the API with a plain HTTP client; a missing
        # User-Agent is counted, not blocked.
        rule_action_override {
          name = "NoUserAgent_HEADER"
          action_to_use {
            count {}
          }
        }
      }
    }

    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "${local.name_prefix}-common"
      sampled_requests_enabled   = true
    }
  }

  # Includes the Log4JRCE rules.
  rule {
    name     = "aws-known-bad-inputs"
    priority = 30

    override_action {
      none {}
    }

    statement {
      managed_rule_group_statement {
        vendor_name = "AWS"
        name        = "AWSManagedRulesKnownBadInputsRuleSet"
      }
    }

    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "${local.name_prefix}-known-bad-inputs"
      sampled_requests_enabled   = true
    }
  }

  visibility_config {
    cloudwatch_metrics_enabled = true
    metric_name                = "${local.name_prefix}-https"
    sampled_requests_enabled   = true
  }
}

resource "aws_wafv2_web_acl_association" "https" {
  resource_arn = aws_lb.https.arn
  web_acl_arn  = aws_wafv2_web_acl.https.arn
}

resource "aws_wafv2_web_acl_logging_configuration" "https" {
  resource_arn            = aws_wafv2_web_acl.https.arn
  log_destination_configs = [aws_cloudwatch_log_group.waf.arn]

  # OIDC callbacks carry authorization codes in the query string, and API
  # calls carry bearer tokens and session cookies: never log them.
  redacted_fields {
    query_string {}
  }
  redacted_fields {
    single_header {
      name = "authorization"
    }
  }
  redacted_fields {
    single_header {
      name = "cookie"
    }
  }
}

# --- NLB --------------------------------------------------------------------

resource "aws_lb" "tunnel" {
  #checkov:skip=CKV_AWS_91:NLB access logs are only written for TLS listeners; both listeners are TCP pass-through (SSH, and TLS terminated by the broker). The broker audits every connection with the client address (client IP preservation); use VPC flow logs for packet-level records.
  name               = "${local.name_prefix}-tunnel"
  load_balancer_type = "network"
  internal           = var.internal_load_balancers
  subnets            = var.load_balancer_subnet_ids
  security_groups    = [aws_security_group.nlb.id]

  enable_cross_zone_load_balancing = true
  enable_deletion_protection       = var.deletion_protection

  tags = local.tags
}

resource "aws_lb_target_group" "tunnel" {
  for_each = {
    ssh      = local.ssh_port
    postgres = local.postgres_port
  }

  name        = "${local.name_prefix}-${each.key == "ssh" ? "ssh" : "pg"}"
  port        = each.value
  protocol    = "TCP"
  target_type = "ip"
  vpc_id      = var.vpc_id

  # The broker sees (and audits) the client's address.
  preserve_client_ip = "true"
  # Give open sessions the broker's shutdown grace, then cut them.
  deregistration_delay   = var.stop_timeout_seconds
  connection_termination = true

  # Route only to brokers whose store answers.
  health_check {
    protocol            = "HTTP"
    port                = tostring(local.http_port)
    path                = "/readyz"
    matcher             = "200"
    interval            = 10
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }

  tags = local.tags

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_lb_listener" "tunnel" {
  for_each = aws_lb_target_group.tunnel

  load_balancer_arn = aws_lb.tunnel.arn
  port              = each.value.port
  protocol          = "TCP"
  # Above session.idle_timeout (15m), so the broker ends idle sessions cleanly.
  tcp_idle_timeout_seconds = 1200

  default_action {
    type             = "forward"
    target_group_arn = each.value.arn
  }

  tags = local.tags
}

# --- certificate and DNS ------------------------------------------------------

resource "aws_acm_certificate" "https" {
  count = local.create_certificate ? 1 : 0

  domain_name       = var.hostname
  validation_method = "DNS"
  key_algorithm     = "EC_prime256v1"
  tags              = local.tags

  options {
    certificate_transparency_logging_preference = "ENABLED"
  }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_route53_record" "certificate_validation" {
  for_each = local.create_certificate ? {
    for o in aws_acm_certificate.https[0].domain_validation_options : o.domain_name => o
  } : {}

  zone_id         = var.route53_zone_id
  name            = each.value.resource_record_name
  type            = each.value.resource_record_type
  records         = [each.value.resource_record_value]
  ttl             = 300
  allow_overwrite = true
}

resource "aws_acm_certificate_validation" "https" {
  count = local.create_certificate ? 1 : 0

  certificate_arn         = aws_acm_certificate.https[0].arn
  validation_record_fqdns = [for r in aws_route53_record.certificate_validation : r.fqdn]
}

resource "aws_route53_record" "https" {
  count = var.route53_zone_id != null ? 1 : 0

  zone_id = var.route53_zone_id
  name    = var.hostname
  type    = "A"

  alias {
    name                   = aws_lb.https.dns_name
    zone_id                = aws_lb.https.zone_id
    evaluate_target_health = true
  }
}

resource "aws_route53_record" "tunnel" {
  count = var.route53_zone_id != null ? 1 : 0

  zone_id = var.route53_zone_id
  name    = var.tunnel_hostname
  type    = "A"

  alias {
    name                   = aws_lb.tunnel.dns_name
    zone_id                = aws_lb.tunnel.zone_id
    evaluate_target_health = true
  }
}
