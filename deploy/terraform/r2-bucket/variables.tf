variable "account_id" {
  description = "The Cloudflare account that owns the bucket."
  type        = string
}

variable "bucket_name" {
  description = "The R2 bucket lifeboat writes its repository to."
  type        = string
}

variable "repository_prefix" {
  description = "The key prefix of the repository in the bucket: the path of lifeboat's s3://BUCKET/PREFIX URL, without slashes at either end; \"\" for a repository at the bucket's root."
  type        = string
  default     = "cluster"
  validation {
    condition     = !startswith(var.repository_prefix, "/") && !endswith(var.repository_prefix, "/")
    error_message = "Give the prefix without leading or trailing slashes, e.g. \"cluster\"."
  }
}

variable "location" {
  description = "The bucket's location hint (wnam, enam, weur, eeur, apac, oc)."
  type        = string
  default     = "weur"
}

variable "lock_days" {
  description = "Days during which nobody, the token's holder included, can delete or overwrite packs and snapshots (ransomware protection). Keep lifeboat's retention keep_within and prune grace at least this long: see deploy/README.md."
  type        = number
  default     = 7
  validation {
    condition     = var.lock_days >= 1 && floor(var.lock_days) == var.lock_days
    error_message = "lock_days must be a whole number of days, at least 1."
  }
}

variable "abort_multipart_days" {
  description = "Days after which R2 aborts multipart uploads that were never completed (an interrupted backup's parts)."
  type        = number
  default     = 1
}
