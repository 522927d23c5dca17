package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// maxCommandOutput bounds what a posture command may print; a firewall
// ruleset in JSON is the largest expected output.
const maxCommandOutput = 16 << 20

// errNotInstalled marks a command that does not exist on this device, which
// leaves its fact unknown rather than failed.
var errNotInstalled = errors.New("not installed")

// lookPath finds a command by name in the platform's system directories
// only, never through $PATH, so a user who controls the agent's environment
// cannot substitute a tool that reports what they want. Tests override
// paths through binPaths.
func (c *Collector) lookPath(name string) (string, error) {
	if p, ok := c.binPaths[name]; ok {
		if p == "" {
			return "", fmt.Errorf("%s: %w", name, errNotInstalled)
		}
		return p, nil
	}
	if filepath.IsAbs(name) {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
		return "", fmt.Errorf("%s: %w", name, errNotInstalled)
	}
	for _, dir := range systemBinDirs() {
		// LookPath on a path checks that one file (adding .exe on Windows).
		if p, err := exec.LookPath(filepath.Join(dir, name)); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: %w", name, errNotInstalled)
}

// run executes a command directly (never through a shell) with the
// collector's timeout and returns its standard output, bounded. A non-zero
// exit is an error carrying the first line of standard error.
func (c *Collector) run(ctx context.Context, name string, args ...string) ([]byte, error) {
	return c.command(ctx, false, name, args...)
}

// runCombined is run with standard error included in the output, for
// commands that print their answer there (macOS sysadminctl).
func (c *Collector) runCombined(ctx context.Context, name string, args ...string) ([]byte, error) {
	return c.command(ctx, true, name, args...)
}

func (c *Collector) command(ctx context.Context, combined bool, name string, args ...string) ([]byte, error) {
	path, err := c.lookPath(name)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()

	cmd := exec.CommandContext(ctx, path, args...)
	// Stable, untranslated output for the parsers.
	cmd.Env = append(os.Environ(), "LC_ALL=C", "LANG=C")
	// A killed command may leave children holding its pipes; do not wait
	// for them beyond this.
	cmd.WaitDelay = 500 * time.Millisecond
	stdout := &limitedBuffer{limit: maxCommandOutput}
	stderr := &limitedBuffer{limit: 4 << 10}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	if combined {
		cmd.Stderr = stdout
	}

	err = cmd.Run()
	if ctx.Err() != nil {
		return nil, fmt.Errorf("%s: %w", name, ctx.Err())
	}
	if stdout.overflow {
		return nil, fmt.Errorf("%s: output exceeds %d bytes", name, maxCommandOutput)
	}
	if err != nil {
		if msg := firstLine(stderr.String()); msg != "" {
			return stdout.Bytes(), fmt.Errorf("%s: %w: %s", name, err, msg)
		}
		return stdout.Bytes(), fmt.Errorf("%s: %w", name, err)
	}
	return stdout.Bytes(), nil
}

// limitedBuffer keeps at most limit bytes and remembers that more came, so a
// runaway command cannot exhaust memory. It keeps accepting writes so the
// command is not killed by a broken pipe before it finishes.
type limitedBuffer struct {
	bytes.Buffer
	limit    int
	overflow bool
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	room := b.limit - b.Len()
	if len(p) > room {
		b.overflow = true
		if room > 0 {
			b.Buffer.Write(p[:room])
		}
		return len(p), nil
	}
	return b.Buffer.Write(p)
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 200 {
		s = s[:200]
	}
	return s
}
