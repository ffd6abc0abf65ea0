# prod: the card-processing production account. Everything environment
# specific lives here; the units under this folder only reference it.
locals {
  environment      = "prod"
  account_id       = "123456789012"
  region           = "eu-central-1"
  deploy_role_name = "terraform-deployer"
  owner            = "platform-security"
  cost_center      = "cc-4100-security"

  # Landing-zone network (owned by the network stack, referenced by id).
  vpc_id             = "vpc-0b7e3c1d9a2f4e580"
  private_subnet_ids = ["subnet-0a31c5e7d9b1f2a40", "subnet-0b42d6f8eac203b51", "subnet-0c53e709fbd314c62"]
  # Internal load balancers: reached over the corporate VPN (Transit Gateway).
  lb_subnet_ids    = ["subnet-0a31c5e7d9b1f2a40", "subnet-0b42d6f8eac203b51", "subnet-0c53e709fbd314c62"]
  vpn_client_cidrs = ["10.250.0.0/20"]
  # Workload VPC ranges the broker connects into (RDS, EC2).
  workload_cidrs = ["10.40.0.0/16"]

  # DNS: public hosted zone (ACM validates certificates through public DNS);
  # the records point at internal load balancers, so they resolve to private
  # addresses reachable only over the VPN.
  route53_zone_id = "Z07412343RJ5PAM2PRODXY"
  domain          = "prod.example.com"

  # The company IdP (OIDC) and the e-mail domain of its users.
  oidc_issuer  = "https://sso.example.com/realms/staff"
  email_domain = "example.com"

  # Release pipeline bumps this (digest-pinned) through a pull request.
  pam_image = "123456789012.dkr.ecr.eu-central-1.amazonaws.com/pam:0.1.0@sha256:5f0c9d3b8a7e6f4c2d1b0a9e8f7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a190817"

  # Workloads reached through pam.
  ecs_cluster_name     = "prod"
  ecs_exec_kms_key_arn = "arn:aws:kms:eu-central-1:123456789012:key/0d6e2f4a-8b1c-4d3e-9f70-5a6b7c8d9e01"

  # Names of the target roles under deploy/terragrunt/prod/target-roles; the
  # broker's policy is computed from them so that pam can be applied first.
  pam_target_roles = ["prod-readonly", "payments-oncall"]

  # CA public keys printed by deploy/scripts/init-key-material.sh (step 2 of
  # the first deployment); null until then.
  ssh_user_ca_public_key   = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFJq0dm3U3o8GjzQn1S2r4o6l3w2yXrj4d6m7nG8bQ4T pam-user-ca"
  ssh_target_ca_public_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK3v1y9cV0mS6dX2wqj7b5c1hP4eZ8nT0aR2uL9fG3kQ pam-target-ca"

  alarm_topic_arn = "arn:aws:sns:eu-central-1:123456789012:platform-security-alerts"
}
