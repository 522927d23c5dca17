//go:build windows

// Windows collectors. They use the platform's standard commands and are
// compile-checked only: UNTESTED here (the project's CI runs on Linux).

package agent

import (
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// systemBinDirs are System32 and Windows PowerShell's directory.
func systemBinDirs() []string {
	root := os.Getenv("SystemRoot")
	if root == "" {
		root = `C:\Windows`
	}
	sys32 := filepath.Join(root, "System32")
	return []string{sys32, filepath.Join(sys32, "WindowsPowerShell", "v1.0")}
}

// powershell runs one non-interactive PowerShell command without the user's
// profile.
func (c *Collector) powershell(ctx context.Context, command string) (string, error) {
	out, err := c.run(ctx, "powershell", "-NoProfile", "-NonInteractive", "-Command", command)
	return strings.TrimSpace(string(out)), err
}

func (c *Collector) osInfo(ctx context.Context) (OS, error) {
	out, err := c.powershell(ctx, `$o = Get-CimInstance Win32_OperatingSystem; "$($o.Caption)|$($o.Version)"`)
	if err != nil {
		return OS{}, err
	}
	name, version, ok := strings.Cut(out, "|")
	if !ok {
		return OS{}, fmt.Errorf("win32_operatingsystem: unexpected output %q", firstLine(out))
	}
	// The NT kernel's version is the OS build version (10.0.BUILD).
	return OS{Name: name, Version: version, Kernel: version}, nil
}

// diskEncrypted asks BitLocker about the system drive (needs
// administrator rights).
func (c *Collector) diskEncrypted(ctx context.Context) (*bool, error) {
	out, err := c.powershell(ctx, `(Get-BitLockerVolume -MountPoint $env:SystemDrive).ProtectionStatus`)
	if err != nil {
		return nil, err
	}
	switch out {
	case "On":
		return boolPtr(true), nil
	case "Off":
		return boolPtr(false), nil
	}
	c.unknownf("disk_encrypted", "bitlocker protection status", "status", firstLine(out))
	return nil, nil
}

// firewallActive requires every profile (domain, private, public) to be on:
// the one in effect changes with the network.
func (c *Collector) firewallActive(ctx context.Context) (*bool, error) {
	out, err := c.run(ctx, "netsh", "advfirewall", "show", "allprofiles", "state")
	if err != nil {
		return nil, err
	}
	profiles, on := 0, 0
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		if len(f) == 2 && strings.EqualFold(f[0], "State") {
			profiles++
			if strings.EqualFold(f[1], "ON") {
				on++
			}
		}
	}
	if profiles == 0 {
		return nil, errors.New("netsh: no profile state in output")
	}
	return boolPtr(on == profiles), nil
}

// screenLock is unknown: the agent runs as a service (SYSTEM) and cannot
// see the signed-in user's screen saver policy.
func (c *Collector) screenLock(context.Context) (*bool, error) {
	c.unknownf("screen_lock", "not detectable from a service on windows")
	return nil, nil
}

// listProcesses runs tasklist, which lists image names only; the path is
// looked up for a matched process in exeHash.
func (c *Collector) listProcesses(ctx context.Context) ([]process, error) {
	out, err := c.run(ctx, "tasklist", "/FO", "CSV", "/NH")
	if err != nil {
		return nil, err
	}
	r := csv.NewReader(bytes.NewReader(out))
	r.FieldsPerRecord = -1
	var procs []process
	for {
		rec, err := r.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("tasklist: %w", err)
		}
		if len(rec) < 2 {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(rec[1]))
		if err != nil || pid <= 0 {
			continue
		}
		procs = append(procs, process{PID: pid, Name: rec[0]})
	}
	return procs, nil
}

// matchProcess compares image names case-insensitively, with or without
// ".exe".
func matchProcess(p process, name string) bool {
	trim := func(s string) string { return strings.TrimSuffix(strings.ToLower(s), ".exe") }
	return trim(p.Name) == trim(name)
}

// exeHash hashes the executable at the process's path on disk. Windows
// keeps a running image from being overwritten but not from being renamed
// away, so this is weaker than Linux's /proc/PID/exe.
func (c *Collector) exeHash(ctx context.Context, p process) (string, string, error) {
	path, err := c.powershell(ctx, "(Get-Process -Id "+strconv.Itoa(p.PID)+").Path")
	if err != nil {
		return "", "", err
	}
	if path == "" {
		return "", "", errors.New("executable path unknown")
	}
	f, err := os.Open(path)
	if err != nil {
		return path, "", err
	}
	defer f.Close()
	sum, err := hashExecutable(ctx, f)
	return path, sum, err
}
