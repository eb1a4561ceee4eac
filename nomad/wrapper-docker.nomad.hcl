# wrapper-docker.nomad.hcl: tandem wraps the app inside one container (docker driver).
#
# The image is compose/Dockerfile's (tandem as ENTRYPOINT and PID 1, plus the app): build it
# with compose/build-images.sh on each client, or push it to your registry.
#
#   nomad job run nomad/wrapper-docker.nomad.hcl
#
# Inside the container tandem listens on 8080 (proxy) and 9901 (admin); Nomad maps them to
# the `http` and `admin` host ports and checks /readyz on `admin`.
# Timing invariant: as in wrapper.nomad.hcl (tandem's 22s < kill_timeout 25s <= 30s).
job "legacy-app-docker" {
  datacenters = ["dc1"]
  type        = "service"

  group "web" {
    network {
      port "http" {
        to = 8080
      }
      port "admin" {
        to = 9901
      }
    }

    service {
      name     = "legacy-app"
      provider = "nomad"
      port     = "http"

      check {
        name     = "ready"
        type     = "http"
        port     = "admin"
        path     = "/readyz"
        interval = "5s"
        timeout  = "2s"
      }
    }

    task "legacy-app" {
      driver = "docker"

      config {
        image = "tandem-legacy-app:dev"
        ports = ["http", "admin"]
        # ENTRYPOINT is /tandem; the task dir's local/ is mounted at /local.
        args = ["--config", "/local/tandem.toml"]
      }

      kill_signal    = "SIGTERM"
      kill_timeout   = "25s"
      shutdown_delay = "5s"

      template {
        destination = "local/tandem.toml"
        change_mode = "restart"
        data        = <<EOT
[service]
name = "legacy-app"

[app]
command = ["/legacy-app", "--host", "127.0.0.1", "--port", "3000"]
stop_signal = "SIGTERM"
stop_timeout = "10s"

[restart]
policy = "on-failure"
max_delay = "10s"

# Published through Nomad's port mapping so the check can reach /readyz.
[admin]
listen = "0.0.0.0:9901"
# Reachable from the Nomad agent, so /metrics and /status need this bearer token (write it
# into secrets/ with a template from Nomad Variables); /healthz and /readyz stay open for checks.
token_file = "{{ env "NOMAD_SECRETS_DIR" }}/admin-token"

[health.readiness]
kind = "http"
target = "http://127.0.0.1:3000/health"
interval = "1s"
timeout = "500ms"

[[proxy.listeners]]
name = "web"
listen = "0.0.0.0:8080"
upstream = "127.0.0.1:3000"
drain_timeout = "8s"

[logs]
exit_timeout = "2s"
EOT
      }
    }
  }
}
