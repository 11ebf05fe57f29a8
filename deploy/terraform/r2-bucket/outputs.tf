output "bucket_name" {
  description = "The bucket: lifeboat's repository URL is s3://<bucket_name>/<repository_prefix>."
  value       = cloudflare_r2_bucket.lifeboat.name
}

output "endpoint" {
  description = "The S3 endpoint: AWS_ENDPOINT_URL_S3."
  value       = "https://${var.account_id}.r2.cloudflarestorage.com"
}

output "access_key_id" {
  description = "The S3 access key id: AWS_ACCESS_KEY_ID (R2 uses the token's id)."
  value       = cloudflare_account_token.lifeboat.id
}

output "secret_access_key" {
  description = "The S3 secret: AWS_SECRET_ACCESS_KEY (R2 uses the SHA-256 of the token's value)."
  value       = sha256(cloudflare_account_token.lifeboat.value)
  sensitive   = true
}
