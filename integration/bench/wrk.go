package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// wrkResult is what the done() hook of the wrk script reports.
type wrkResult struct {
	Requests   int64   `json:"requests"`
	DurationUs float64 `json:"duration_us"`
	P50Us      float64 `json:"p50_us"`
	P99Us      float64 `json:"p99_us"`
	MeanUs     float64 `json:"mean_us"`
	MaxUs      float64 `json:"max_us"`
	Connect    int64   `json:"connect"`
	Read       int64   `json:"read"`
	Write      int64   `json:"write"`
	Status     int64   `json:"status"`
	Timeout    int64   `json:"timeout"`

	clientCPU time.Duration // wrk's own user+system time
}

func (r wrkResult) rps() float64 { return float64(r.Requests) / (r.DurationUs / 1e6) }

func (r wrkResult) errors() int64 { return r.Connect + r.Read + r.Write + r.Status + r.Timeout }

const resultMarker = "BENCH-RESULT "

var errNoRequests = errors.New("no request completed")

// wrkScript sets the request headers once (wrk then builds one static
// request, so Lua costs nothing per request) and prints the summary as JSON.
// Header values reach wrk only through this file, never its command line.
func wrkScript(headers map[string]string) (string, error) {
	var b strings.Builder
	for _, k := range sortedKeys(headers) {
		v := headers[k]
		if !luaSafe(k) || !luaSafe(v) {
			return "", fmt.Errorf("header %s: value not representable in the wrk script", k)
		}
		fmt.Fprintf(&b, "wrk.headers[%q] = %q\n", k, v)
	}
	b.WriteString(`done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('` + resultMarker + `{"requests":%.0f,"duration_us":%.0f,"p50_us":%.0f,"p99_us":%.0f,"mean_us":%.1f,"max_us":%.0f,"connect":%.0f,"read":%.0f,"write":%.0f,"status":%.0f,"timeout":%.0f}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.mean, latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
`)
	return b.String(), nil
}

// luaSafe: printable ASCII without quotes or backslashes, so %q quoting is
// the same in Go and Lua.
func luaSafe(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// runWrk loads url from CPU cpu for d and returns wrk's figures.
func runWrk(ctx context.Context, wrk, scriptPath, url string, cpu, conns int, d time.Duration) (wrkResult, error) {
	secs := int(d / time.Second)
	ctx, cancel := context.WithTimeout(ctx, d+30*time.Second)
	defer cancel()
	args := []string{"-c", strconv.Itoa(cpu), wrk, "-t1", "-c" + strconv.Itoa(conns), "-d" + strconv.Itoa(secs) + "s",
		"--timeout", "5s", "--latency", "-s", scriptPath, url}
	cmd := exec.CommandContext(ctx, "taskset", args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Run(); err != nil {
		return wrkResult{}, fmt.Errorf("wrk %s: %w\n%s%s", url, err, stdout.String(), stderr.String())
	}
	var res wrkResult
	found := false
	for line := range strings.Lines(stdout.String()) {
		if j, ok := strings.CutPrefix(strings.TrimSpace(line), resultMarker); ok {
			if err := json.Unmarshal([]byte(j), &res); err != nil {
				return wrkResult{}, fmt.Errorf("wrk %s: parse summary %q: %w", url, j, err)
			}
			found = true
		}
	}
	if !found {
		return wrkResult{}, fmt.Errorf("wrk %s: no summary in its output:\n%s%s", url, stdout.String(), stderr.String())
	}
	if n := res.errors(); n > 0 {
		return wrkResult{}, fmt.Errorf("wrk %s: %d errors (connect %d, read %d, write %d, HTTP status ≥ 400 %d, timeout %d) in %d requests",
			url, n, res.Connect, res.Read, res.Write, res.Status, res.Timeout, res.Requests)
	}
	if res.Requests == 0 || res.DurationUs <= 0 {
		return wrkResult{}, fmt.Errorf("wrk %s: %w in %s", url, errNoRequests, d)
	}
	if ps := cmd.ProcessState; ps != nil {
		res.clientCPU = ps.UserTime() + ps.SystemTime()
	}
	return res, nil
}

// ensureWrk finds wrk, installing the Debian package when running as root.
func ensureWrk(ctx context.Context) (string, error) {
	if p, err := exec.LookPath("wrk"); err == nil {
		return p, nil
	}
	if os.Geteuid() != 0 {
		return "", errors.New("wrk is not installed: install it with `sudo apt-get install -y wrk` (Debian/Ubuntu) and run again")
	}
	if _, err := exec.LookPath("apt-get"); err != nil {
		return "", errors.New("wrk is not installed and there is no apt-get: install wrk (https://github.com/wg/wrk) and run again")
	}
	fmt.Fprintln(os.Stderr, "bench: installing wrk with apt-get")
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	apt := func(args ...string) error {
		cmd := exec.CommandContext(ctx, "apt-get", append([]string{"-o", "DPkg::Lock::Timeout=120", "-qq"}, args...)...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		return cmd.Run()
	}
	if err := apt("install", "-y", "--no-install-recommends", "wrk"); err != nil {
		// The package lists may be missing or stale.
		if err := apt("update"); err != nil {
			return "", fmt.Errorf("apt-get update: %w", err)
		}
		if err := apt("install", "-y", "--no-install-recommends", "wrk"); err != nil {
			return "", fmt.Errorf("apt-get install wrk: %w", err)
		}
	}
	return exec.LookPath("wrk")
}

// writeScript writes a wrk script readable only by us.
func writeScript(dir, name string, headers map[string]string) (string, error) {
	s, err := wrkScript(headers)
	if err != nil {
		return "", err
	}
	p := filepath.Join(dir, name+".lua")
	return p, os.WriteFile(p, []byte(s), 0o600)
}
