package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ztna-dev/ztna/internal/devenv"
)

func runDev(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("dev", flag.ContinueOnError)
	defDir := ".ztna-dev"
	if d, err := os.UserConfigDir(); err == nil {
		defDir = filepath.Join(d, "ztna", "dev")
	}
	dataDir := fs.String("data-dir", defDir, "where the dev CA, keys and sessions are kept between runs")
	listen := fs.String("listen", "127.0.0.1:8443", "edge HTTPS and HTTP/3 address")
	admin := fs.String("admin", "127.0.0.1:9090", `admin address (/healthz, /readyz, /metrics), or "off"`)
	idp := fs.String("idp", "127.0.0.1:5556", "development OIDC provider address")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "Usage: ztna dev [flags]\n\nRuns the edge, a development OIDC provider with demo users and demo apps on this\nmachine, with no setup. Host names under .localhost resolve to this machine in\nbrowsers. Ctrl-C stops everything.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	switch *logLevel {
	case "debug", "info", "warn", "error":
	default:
		fmt.Fprintf(stderr, "ztna dev: -log-level: must be debug, info, warn or error, not %q\n", *logLevel)
		return errUsage
	}
	logger := newLogger(stderr, "text", *logLevel)
	env, err := devenv.Start(ctx, devenv.Options{
		DataDir: *dataDir, Listen: *listen, AdminListen: *admin, IdPListen: *idp,
		Logger: logger, Audit: stderr, LocalDevice: true, PolicySource: "store",
	})
	if err != nil {
		return err
	}
	cfgFile := filepath.Join(*dataDir, "edge.yaml")
	if err := os.WriteFile(cfgFile, []byte(env.ConfigYAML), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", cfgFile, err)
	}
	printBanner(stdout, env, *admin, cfgFile)
	<-ctx.Done()
	fmt.Fprintln(stdout, "\nztna dev: stopping…")
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return env.Close(sctx)
}

func printBanner(w io.Writer, env *devenv.Env, admin, cfgFile string) {
	var b strings.Builder
	fmt.Fprintf(&b, "\nztna dev is running.\n\n")
	fmt.Fprintf(&b, "  Open in a browser:\n")
	fmt.Fprintf(&b, "    %-40s demo app: shows the identity it receives\n", env.AppURL("whoami")+"/")
	fmt.Fprintf(&b, "    %-40s group A: the Security Tech department (alice)\n", env.AppURL("secure")+"/")
	fmt.Fprintf(&b, "    %-40s group C: security engineers by title (alice)\n", env.AppURL("soc")+"/")
	fmt.Fprintf(&b, "    %-40s group B: the Security Policy department (nobody yet)\n", env.AppURL("grc")+"/")
	fmt.Fprintf(&b, "    %-40s only from an enrolled device passing the strict posture profile:\n", env.AppURL("strict")+"/")
	fmt.Fprintf(&b, "    %-40s shows what this machine fails and how to fix it\n", "")
	fmt.Fprintf(&b, "    %-40s TCP echo app; greets you with the identity the edge signed\n", "echo ("+env.EchoAddr+")")
	fmt.Fprintf(&b, "    %-40s (only the edge can connect: reach it through the tunnel, below)\n", "")
	fmt.Fprintf(&b, "    %-40s admin console (sign in as admin): groups with live members, users,\n", env.AppURL("console")+"/")
	fmt.Fprintf(&b, "    %-40s apps, devices, live sessions, audit log, what-if; policy kept in the store\n", "")
	fmt.Fprintf(&b, "\n  Every app sits behind PROXY protocol v2: the page shows the identity verified\n")
	fmt.Fprintf(&b, "  on its connection as well as the signed X-Ztna-Assertion header.\n")
	fmt.Fprintf(&b, "\n  Edge login host   %s\n", env.AuthOrigin)
	fmt.Fprintf(&b, "  Dev IdP           %s\n", env.IdP.Issuer())
	if admin != "off" {
		fmt.Fprintf(&b, "  Admin             http://%s/healthz  /readyz  /metrics\n", admin)
	}
	fmt.Fprintf(&b, "  Dev CA            %s\n", env.CAFile)
	fmt.Fprintf(&b, "                    (trust it in your browser, or accept the certificate warning)\n")
	fmt.Fprintf(&b, "  Edge config       %s\n", cfgFile)
	fmt.Fprintf(&b, "                    (the same setup as a `ztna serve` file: a starting point)\n")
	if env.LocalDeviceID != "" {
		fmt.Fprintf(&b, "\n  This machine is enrolled as device %s (user alice), and the agent runs\n", env.LocalDeviceID)
		fmt.Fprintf(&b, "  in-process, reporting its real posture every 30s. To let a browser present the\n")
		fmt.Fprintf(&b, "  device certificate, see:  ztna agent status --state-dir %s\n", env.AgentDir)
	}
	if env.LocalDeviceID != "" {
		fmt.Fprintf(&b, "\n  Client tunnel (this machine is the enrolled device; sign in as alice):\n")
		fmt.Fprintf(&b, "    ztna tunnel login --edge %s --ca-file %s\n", env.AuthOrigin, env.CAFile)
		fmt.Fprintf(&b, "    ztna tunnel forward --agent-dir %s --ca-file %s echo 127.0.0.1:7000\n", env.AgentDir, env.CAFile)
		fmt.Fprintf(&b, "    nc 127.0.0.1 7000\n")
		fmt.Fprintf(&b, "    ztna tunnel status --agent-dir %s --ca-file %s   (transport, apps, why not)\n", env.AgentDir, env.CAFile)
		fmt.Fprintf(&b, "    ztna tunnel logout --ca-file %s   (no browser here? login --device)\n", env.CAFile)
	}
	fmt.Fprintf(&b, "\n  Signal API (quarantine a device, as Falcosidekick would):\n")
	fmt.Fprintf(&b, "    curl --cacert %s -H \"Authorization: Bearer $(cat %s)\" \\\n", env.CAFile, filepath.Join(filepath.Dir(env.CAFile), "signals-token"))
	fmt.Fprintf(&b, "      --connect-to %s:%s -d @falco.json %s/api/signals/falco\n", strings.TrimPrefix(env.AuthOrigin, "https://"), env.EdgeAddr, env.AuthOrigin)
	fmt.Fprintf(&b, "    (admin API token: %s; release: POST /api/devices/ID/release;\n", filepath.Join(filepath.Dir(env.CAFile), "admin-token"))
	fmt.Fprintf(&b, "     after a role change at the IdP: POST /api/users/ID/refresh)\n")
	fmt.Fprintf(&b, "\n  Users (username / password):\n")
	for _, u := range env.Users {
		fmt.Fprintf(&b, "    %-7s / %-16s %s, %s; groups %s\n", u.Username, u.Password,
			u.Attributes["department"], u.Attributes["title"], strings.Join(u.Groups, ", "))
	}
	fmt.Fprintf(&b, "\n  Policy (groups by attribute; see %s): whoami lets engineering and finance in\n", cfgFile)
	fmt.Fprintf(&b, "  (finance read-only); secure, soc and grc follow the seed's groups A, C and B; strict,\n")
	fmt.Fprintf(&b, "  employees from a compliant device; echo, engineering; console, ztna-admins (admin,\n")
	fmt.Fprintf(&b, "  who also owns it); everyone else is denied. In the console, move bob to Security\n")
	fmt.Fprintf(&b, "  Tech (Users → bob → attributes) and watch secure open for him.\n")
	fmt.Fprintf(&b, "\nPress Ctrl-C to stop.\n")
	fmt.Fprint(w, b.String())
}
