# What the nodes install: scripts/release's dist/ files, pinned by the hash of their SHA256SUMS.

variable "release_sha256" {
  description = "sha256 of the release's SHA256SUMS file (scripts/release prints it). The user data installs nothing that this chain of checksums does not pin."
  type        = string
  validation {
    condition     = can(regex("^[0-9a-f]{64}$", var.release_sha256))
    error_message = "release_sha256 must be 64 lowercase hex digits: the first field of `sha256sum dist/SHA256SUMS`."
  }
}
