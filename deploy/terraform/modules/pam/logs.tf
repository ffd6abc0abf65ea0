# CloudWatch log groups (KMS-encrypted with the logs key, retention at least
# 400 days) and alarms. The store's log groups are in rds.tf.

resource "aws_cloudwatch_log_group" "broker" {
  name              = "/${var.name}/${var.environment}/broker"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.logs.arn
  tags              = local.tags
}

# Output of ECS Exec sessions into tasks of the broker's own cluster. The
# broker service has ECS Exec disabled; this only catches a future change.
resource "aws_cloudwatch_log_group" "ecs_exec" {
  name              = "/${var.name}/${var.environment}/ecs-exec"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.logs.arn
  tags              = local.tags
}

# Created ahead of Container Insights, which would create it unencrypted.
resource "aws_cloudwatch_log_group" "container_insights" {
  name              = "/aws/ecs/containerinsights/${local.name_prefix}/performance"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.logs.arn
  tags              = local.tags
}

# WAF requires the aws-waf-logs- prefix.
resource "aws_cloudwatch_log_group" "waf" {
  name              = "aws-waf-logs-${local.name_prefix}"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.logs.arn
  tags              = local.tags
}

# --- alarms --------------------------------------------------------------------

locals {
  # Every alarm has the same shape (dimensions as map(string)) so the set can
  # be filtered as one map.
  alarm_definitions = merge(
    {
      tasks-below-desired = {
        description = "Fewer running broker tasks than desired"
        namespace   = "ECS/ContainerInsights"
        metric      = "RunningTaskCount"
        statistic   = "Minimum"
        comparison  = "LessThanThreshold"
        threshold   = var.desired_count
        dimensions  = tomap({ ClusterName = local.name_prefix, ServiceName = var.name })
      }
      https-unhealthy-targets = {
        description = "Broker tasks failing /readyz behind the ALB"
        namespace   = "AWS/ApplicationELB"
        metric      = "UnHealthyHostCount"
        statistic   = "Maximum"
        comparison  = "GreaterThanThreshold"
        threshold   = 0
        dimensions  = tomap({ LoadBalancer = aws_lb.https.arn_suffix, TargetGroup = aws_lb_target_group.http.arn_suffix })
      }
      https-5xx = {
        description = "Broker answering 5xx through the ALB"
        namespace   = "AWS/ApplicationELB"
        metric      = "HTTPCode_Target_5XX_Count"
        statistic   = "Sum"
        comparison  = "GreaterThanThreshold"
        threshold   = 10
        dimensions  = tomap({ LoadBalancer = aws_lb.https.arn_suffix })
      }
      store-free-storage = {
        description = "Broker store below 10 GiB free storage"
        namespace   = "AWS/RDS"
        metric      = "FreeStorageSpace"
        statistic   = "Minimum"
        comparison  = "LessThanThreshold"
        threshold   = 10 * 1024 * 1024 * 1024
        dimensions  = tomap({ DBInstanceIdentifier = aws_db_instance.store.identifier })
      }
      store-cpu = {
        description = "Broker store CPU above 80%"
        namespace   = "AWS/RDS"
        metric      = "CPUUtilization"
        statistic   = "Average"
        comparison  = "GreaterThanThreshold"
        threshold   = 80
        dimensions  = tomap({ DBInstanceIdentifier = aws_db_instance.store.identifier })
      }
    },
    {
      for k, tg in aws_lb_target_group.tunnel : "${k}-unhealthy-targets" => {
        description = "Broker tasks failing /readyz behind the NLB (${k})"
        namespace   = "AWS/NetworkELB"
        metric      = "UnHealthyHostCount"
        statistic   = "Maximum"
        comparison  = "GreaterThanThreshold"
        threshold   = 0
        dimensions  = tomap({ LoadBalancer = aws_lb.tunnel.arn_suffix, TargetGroup = tg.arn_suffix })
      }
    },
  )
  alarms = { for k, v in local.alarm_definitions : k => v if var.alarm_topic_arn != null }
}

resource "aws_cloudwatch_metric_alarm" "this" {
  for_each = local.alarms

  alarm_name          = "${local.name_prefix}-${each.key}"
  alarm_description   = "pam ${var.environment}: ${each.value.description}"
  namespace           = each.value.namespace
  metric_name         = each.value.metric
  statistic           = each.value.statistic
  comparison_operator = each.value.comparison
  threshold           = each.value.threshold
  dimensions          = each.value.dimensions
  period              = 60
  evaluation_periods  = 5
  datapoints_to_alarm = 3
  treat_missing_data  = each.key == "tasks-below-desired" ? "breaching" : "notBreaching"
  actions_enabled     = true
  alarm_actions       = [var.alarm_topic_arn]
  ok_actions          = [var.alarm_topic_arn]
  tags                = local.tags
}
