# The Talos API access lifeboat needs, as a config patch for the Terraform
# Talos provider, so that `terraform apply` keeps it (a `talosctl patch`
# alone is reverted by the next apply). Copy this file next to your
# talos_machine_configuration of the control plane, together with the two
# YAML files, and add the local to its patches:
#
#   data "talos_machine_configuration" "controlplane" {
#     ...
#     config_patches = concat(var.controlplane_patches, [local.lifeboat_talos_api_access])
#   }
#
# Talos >= 1.14 takes the KubeTalosAPIAccessConfig document; before 1.14 the
# v1alpha1 machine.features.kubernetesTalosAPIAccess block. Both grant only
# os:etcd:backup to the namespace lifeboat.

variable "lifeboat_talos_1_14_or_later" {
  description = "Whether the nodes run Talos 1.14 or later (KubeTalosAPIAccessConfig document) or earlier (machine.features block)."
  type        = bool
  default     = true
}

locals {
  lifeboat_talos_api_access = var.lifeboat_talos_1_14_or_later ? file("${path.module}/kubetalosapiaccessconfig-lifeboat.yaml") : file("${path.module}/patch-kubernetes-talos-api-access.yaml")
}
