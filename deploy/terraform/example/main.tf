# Using the module, with Terraform's own state in R2 (as the rest of the
# infrastructure keeps it). The backend reads AWS_ACCESS_KEY_ID and
# AWS_SECRET_ACCESS_KEY of a token for the state bucket; the provider reads
# CLOUDFLARE_API_TOKEN (a token that may edit R2 and create API tokens).
#
#   terraform init && terraform apply
#   terraform output -raw secret_access_key   # into secret-lifeboat-r2.enc.yaml

terraform {
  required_providers {
    cloudflare = {
      source  = "cloudflare/cloudflare"
      version = "~> 5.0"
    }
  }
  backend "s3" {
    bucket                      = "terraform-state"
    key                         = "lifeboat/terraform.tfstate"
    region                      = "auto"
    endpoints                   = { s3 = "https://ACCOUNT_ID.r2.cloudflarestorage.com" }
    skip_credentials_validation = true
    skip_region_validation      = true
    skip_requesting_account_id  = true
    skip_metadata_api_check     = true
    skip_s3_checksum            = true
    use_path_style              = true
  }
}

variable "account_id" {
  description = "The Cloudflare account id."
  type        = string
}

provider "cloudflare" {}

module "lifeboat_bucket" {
  source            = "../r2-bucket"
  account_id        = var.account_id
  bucket_name       = "homelab-lifeboat"
  repository_prefix = "cluster"
  lock_days         = 7
}

output "bucket_name" {
  value = module.lifeboat_bucket.bucket_name
}

output "endpoint" {
  value = module.lifeboat_bucket.endpoint
}

output "access_key_id" {
  value = module.lifeboat_bucket.access_key_id
}

output "secret_access_key" {
  value     = module.lifeboat_bucket.secret_access_key
  sensitive = true
}
