package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/ztna-dev/ztna/internal/audit"
	"github.com/ztna-dev/ztna/posture"
	"github.com/ztna-dev/ztna/proxy"
	"github.com/ztna-dev/ztna/proxy/edge"
	"github.com/ztna-dev/ztna/proxy/identity"
)

func runServe(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	path := fs.String("config", "", "path to the YAML config file (required)")
	check := fs.Bool("check", false, "validate the config file and exit")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "Usage: ztna serve --config FILE\n\nRuns the production edge. The config is reloaded when the file changes and on\nSIGHUP; an invalid config is rejected and the previous one keeps serving.\nSIGTERM drains: not ready, wait listen.drain_delay, close listeners, finish\nin-flight requests within listen.grace_timeout.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	if *path == "" {
		fmt.Fprintln(stderr, "ztna serve: --config is required")
		return errUsage
	}
	cfg, err := proxy.LoadConfig(*path)
	if err != nil {
		return err
	}
	if *check {
		fmt.Fprintf(stderr, "%s: ok\n", *path)
		return nil
	}
	if cfg.TLS.CertFile == "" {
		return fmt.Errorf("%s: tls.cert_file and tls.key_file are required for serve", *path)
	}
	logger := newLogger(stderr, cfg.Log.Format, cfg.Log.Level)
	if err := os.MkdirAll(dataDir(cfg), 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	st, replicas, startReplicas, closeStore, err := openStore(ctx, cfg, logger)
	if err != nil {
		return err
	}
	defer closeStore()
	keyFile := cfg.Signing.KeyFile
	if keyFile == "" {
		keyFile = filepath.Join(dataDir(cfg), "signing-keys.json")
	}
	keys, err := identity.LoadOrCreateKeySet(keyFile, cfg.Signing.RotateAfter, time.Now())
	if err != nil {
		return err
	}
	auditW := stderr
	if cfg.Log.AuditFile != "" {
		f, err := os.OpenFile(cfg.Log.AuditFile, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
		if err != nil {
			return fmt.Errorf("audit file: %w", err)
		}
		defer f.Close()
		auditW = f
	}
	al := audit.New(auditW, 0, logger)
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = al.Close(cctx)
	}()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	ca, err := posture.LoadOrCreateDeviceCA(cfg.DeviceCAFiles())
	if err != nil {
		return err
	}
	px, err := proxy.New(ctx, cfg, proxy.Options{Store: st, Keys: keys, Audit: al, Logger: logger, Registry: reg, DeviceCA: ca,
		Bus: replicas})
	if err != nil {
		return err
	}
	defer px.Close()
	startReplicas(px.ReplicaEvents())
	srv, err := edge.New(cfg.Listen, edge.Options{
		Handler: px,
		// Enrolled devices identify themselves with a client certificate;
		// browsers and clients without one are served as before.
		TLSConfig: &tls.Config{GetCertificate: px.GetCertificate,
			ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: ca.Pool()},
		Metrics:    reg,
		Registerer: reg,
		Logger:     logger,
		Tunnel:     px.ServeTunnel,
	})
	if err != nil {
		return err
	}
	wctx, cancelWatch := context.WithCancel(ctx)
	defer cancelWatch()
	go px.WatchConfig(wctx, *path, 0)
	logger.Info("ztna edge starting", "version", version, "auth_origin", cfg.AuthOrigin(), "apps", len(cfg.Apps))
	if err := srv.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	logger.Info("ztna edge stopped")
	return nil
}

func dataDir(cfg *proxy.Config) string {
	if cfg.DataDir == "" {
		return "/var/lib/ztna"
	}
	return cfg.DataDir
}
