package proxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/ztna-dev/ztna/groups"
	"github.com/ztna-dev/ztna/internal/config"
	"github.com/ztna-dev/ztna/internal/files"
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
		last = e.sourcesHashNow(path)
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
		h := e.sourcesHashNow(path)
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
	cfg, err := LoadConfig(path) // validates, compiling the policy once
	if err != nil {
		e.rejected(err)
	} else {
		err = e.apply(ctx, cfg)
	}
	if err != nil {
		e.logger.Error("config reload rejected; the previous config keeps serving", "file", path, "err", err)
		return false
	}
	e.logger.Info("config reloaded", "file", path, "version", e.State().Version)
	return true
}

// sourcesHashNow hashes the config file at path, the serving config's
// policy dir and the files it names as they are now; nil if the config
// file cannot be read.
func (e *Edge) sourcesHashNow(path string) []byte {
	b, err := readConfigFile(path)
	if err != nil {
		return nil
	}
	cfg := e.State().Config
	var ph []byte
	if dir := cfg.Policy.Dir; dir != "" {
		ph = policyDirHash(dir)
	}
	return sourcesHash(b, ph, cfg.filesHash())
}

// sourcesHash combines the config file's bytes, the policy dir's hash and
// the hash of the files the config names.
func sourcesHash(configData, policyHash, filesHash []byte) []byte {
	h := sha256.New()
	h.Write(configData)
	h.Write(policyHash)
	h.Write(filesHash)
	return h.Sum(nil)
}

// policyDirHash hashes the names and contents of the policy files below
// dir (test files too: a change to them changes nothing served, but
// hashing them costs nothing and keeps the rule simple). An unreadable
// dir hashes to a marker, so that it recovering is a change.
func policyDirHash(dir string) []byte {
	h := sha256.New()
	paths, err := groups.ListFiles(dir, groups.IsPolicyFile)
	if err != nil {
		h.Write([]byte("unreadable"))
		return h.Sum(nil)
	}
	for _, p := range paths {
		b, _, err := files.ReadRegular(p, config.MaxFileSize)
		fmt.Fprintf(h, "%d:%s:%d:", len(p), p, len(b))
		if err != nil {
			h.Write([]byte("unreadable"))
		}
		h.Write(b)
	}
	return h.Sum(nil)
}
