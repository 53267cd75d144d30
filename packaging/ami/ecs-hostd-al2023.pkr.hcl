# Reference Packer template: an Amazon Linux 2023 ECS container-instance AMI with ecs-hostd
# (packaging spec §8). Build once per architecture:
#
#   packer init packaging/ami && packer build \
#     -var agent_version=0.1.0 -var arch=arm64 -var region=eu-west-1 \
#     -var package=dist/ecs-hostd-0.1.0-1.amzn2023.aarch64.rpm packaging/ami
#
# provision.sh installs Docker and the rpm, enables both units, never starts the agent and
# cleans instance state. The cluster and every per-group setting go in user-data
# (packaging/user-data.sh), never into the image.

packer {
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = ">= 1.3.0"
    }
  }
}

variable "agent_version" {
  type = string
}

variable "package" {
  type        = string
  description = "Path of the ecs-hostd .amzn2023 rpm for this architecture (scripts/package.sh)."
}

variable "arch" {
  type    = string
  default = "arm64" # or x86_64
}

variable "region" {
  type = string
}

locals {
  instance_type = var.arch == "arm64" ? "m7g.large" : "m7i.large"
}

source "amazon-ebs" "ecs_hostd_al2023" {
  ami_name      = "ecs-hostd-al2023-${var.arch}-${var.agent_version}-{{timestamp}}"
  instance_type = local.instance_type
  region        = var.region
  ssh_username  = "ec2-user"

  source_ami_filter {
    filters = {
      name         = "al2023-ami-2023.*-kernel-*-${var.arch}"
      architecture = var.arch
    }
    owners      = ["amazon"]
    most_recent = true
  }

  # IMDSv2 only, on the build instance and on every instance launched from the image.
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }
  imds_support = "v2.0"

  tags = {
    ecs-hostd_version = var.agent_version
    base_ami_id       = "{{ .SourceAMI }}"
    base_ami_name     = "{{ .SourceAMIName }}"
  }
}

build {
  sources = ["source.amazon-ebs.ecs_hostd_al2023"]

  provisioner "file" {
    source      = var.package
    destination = "/tmp/ecs-hostd.rpm"
  }

  provisioner "file" {
    source      = "${path.root}/provision.sh"
    destination = "/tmp/provision.sh"
  }

  provisioner "shell" {
    inline = [
      "sudo bash /tmp/provision.sh /tmp/ecs-hostd.rpm",
      "rm -f /tmp/provision.sh",
    ]
  }

  # Record what went into the image (Docker's version is known only after the install).
  provisioner "shell" {
    inline = ["docker --version || true", "ecs-hostd --version"]
  }

  post-processor "manifest" {
    output     = "manifest.json"
    strip_path = true
  }
}
