package proxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// WatchConfig reloads the config file at path when it changes (polled by
// content hash every interval, which also follows Kubernetes ConfigMap
// symlink swaps that file-event watchers miss) and on SIGHUP, until ctx is
// done. Each reload parses, validates and compiles the whole file and swaps
// it in only if all of that succeeds; otherwise the error is logged with
// file, line and field, and the old config keeps serving.
func (e *Edge) WatchConfig(ctx context.Context, path string, interval time.Duration) {
	if interval <= 0 {
		interval = 2 * time.Second
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	// The baseline is the file the serving config came from, so a change
	// made between loading it and starting the watcher is not missed.
	last := e.State().Config.sourceHash
	if last == nil {
		last = fileHash(path)
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		forced := false
		select {
		case <-ctx.Done():
			return
		case <-hup:
			forced = true
		case <-t.C:
		}
		h := fileHash(path)
		if !forced && (h == nil || bytes.Equal(h, last)) {
			continue
		}
		last = h
		e.Reload(ctx, path)
	}
}

// Reload loads path and applies it, logging the outcome. It reports whether
// the new config is now serving.
func (e *Edge) Reload(ctx context.Context, path string) bool {
	cfg, err := LoadConfig(path)
	if err != nil {
		e.metrics.reloads.WithLabelValues("rejected").Inc()
	} else {
		err = e.Apply(ctx, cfg)
	}
	if err != nil {
		e.logger.Error("config reload rejected; the previous config keeps serving", "file", path, "err", err)
		return false
	}
	e.logger.Info("config reloaded", "file", path, "version", e.State().Version)
	return true
}

func fileHash(path string) []byte {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	h := sha256.Sum256(b)
	return h[:]
}
