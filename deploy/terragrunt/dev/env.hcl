# dev: the shared development account. Same shape as prod, smaller and
# cheaper, Object Lock in GOVERNANCE mode so test recordings can be purged.
locals {
  environment      = "dev"
  account_id       = "210987654321"
  region           = "eu-central-1"
  deploy_role_name = "terraform-deployer"
  owner            = "platform-security"
  cost_center      = "cc-4100-security"

  vpc_id             = "vpc-05d2a8e1c7b3f9046"
  private_subnet_ids = ["subnet-01f4b7a2c9e5d3860", "subnet-02a5c8b3dae6e4971"]
  lb_subnet_ids      = ["subnet-01f4b7a2c9e5d3860", "subnet-02a5c8b3dae6e4971"]
  vpn_client_cidrs   = ["10.250.0.0/20"]
  workload_cidrs     = ["10.20.0.0/16"]

  route53_zone_id = "Z0551234DEVPAM7QWERTY"
  domain          = "dev.example.com"

  oidc_issuer  = "https://sso.example.com/realms/staff"
  email_domain = "example.com"

  pam_image = "210987654321.dkr.ecr.eu-central-1.amazonaws.com/pam:0.1.0@sha256:5f0c9d3b8a7e6f4c2d1b0a9e8f7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a190817"

  ecs_cluster_name     = "dev"
  ecs_exec_kms_key_arn = null

  pam_target_roles = ["dev-readonly", "dev-developer"]

  ssh_user_ca_public_key   = null
  ssh_target_ca_public_key = null

  alarm_topic_arn = null
}
