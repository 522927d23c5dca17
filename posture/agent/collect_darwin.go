//go:build darwin

// macOS collectors. They use the platform's standard commands and are
// compile-checked only: UNTESTED here (the project's CI runs on Linux).

package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

func systemBinDirs() []string { return []string{"/usr/bin", "/usr/sbin", "/bin", "/sbin"} }

func (c *Collector) osInfo(ctx context.Context) (OS, error) {
	var (
		info OS
		errs []error
	)
	if out, err := c.run(ctx, "sw_vers", "-productName"); err != nil {
		errs = append(errs, err)
	} else {
		info.Name = strings.TrimSpace(string(out))
	}
	if out, err := c.run(ctx, "sw_vers", "-productVersion"); err != nil {
		errs = append(errs, err)
	} else {
		info.Version = strings.TrimSpace(string(out))
	}
	if out, err := c.run(ctx, "uname", "-r"); err != nil {
		errs = append(errs, err)
	} else {
		info.Kernel = strings.TrimSpace(string(out))
	}
	return info, errors.Join(errs...)
}

// diskEncrypted asks FileVault. Encryption still in progress counts as not
// encrypted yet.
func (c *Collector) diskEncrypted(ctx context.Context) (*bool, error) {
	out, err := c.run(ctx, "fdesetup", "status")
	if err != nil {
		return nil, err
	}
	s := string(out)
	switch {
	case strings.Contains(s, "FileVault is On"):
		return boolPtr(true), nil
	case strings.Contains(s, "FileVault is Off"), strings.Contains(s, "in progress"):
		return boolPtr(false), nil
	}
	return nil, fmt.Errorf("fdesetup: unexpected output %q", firstLine(s))
}

// firewallActive asks the application firewall ("State = 1" enabled, "2"
// block all, "0" disabled). A pf ruleset is not consulted.
func (c *Collector) firewallActive(ctx context.Context) (*bool, error) {
	out, err := c.run(ctx, "/usr/libexec/ApplicationFirewall/socketfilterfw", "--getglobalstate")
	if err != nil {
		return nil, err
	}
	s := string(out)
	switch {
	case strings.Contains(s, "disabled"), strings.Contains(s, "State = 0"):
		return boolPtr(false), nil
	case strings.Contains(s, "enabled"), strings.Contains(s, "State = 1"), strings.Contains(s, "State = 2"):
		return boolPtr(true), nil
	}
	return nil, fmt.Errorf("socketfilterfw: unexpected output %q", firstLine(s))
}

// screenLock is best-effort: sysadminctl reports the console user's setting
// on its standard error ("screenLock delay is N seconds" or "screenLock is
// off"); anything else is unknown.
func (c *Collector) screenLock(ctx context.Context) (*bool, error) {
	out, err := c.runCombined(ctx, "sysadminctl", "-screenLock", "status")
	if errors.Is(err, errNotInstalled) {
		c.unknownf("screen_lock", "sysadminctl not installed")
		return nil, nil
	}
	s := string(out)
	switch {
	case strings.Contains(s, "screenLock is off"):
		return boolPtr(false), nil
	case strings.Contains(s, "screenLock delay is"), strings.Contains(s, "screenLock is immediate"):
		return boolPtr(true), nil
	}
	c.unknownf("screen_lock", "unrecognised sysadminctl output", "output", firstLine(s))
	return nil, err
}

// listProcesses runs ps; macOS prints the executable's full path as comm.
// Zombies and stopped processes are left out.
func (c *Collector) listProcesses(ctx context.Context) ([]process, error) {
	out, err := c.run(ctx, "ps", "-axo", "pid=,state=,comm=")
	if err != nil {
		return nil, err
	}
	var procs []process
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		pid, err := strconv.Atoi(f[0])
		if err != nil || pid <= 0 {
			continue
		}
		if strings.ContainsAny(f[1][:1], "ZT") {
			continue
		}
		comm := afterFields(line, 2) // may contain spaces
		p := process{PID: pid, Name: filepath.Base(comm)}
		if filepath.IsAbs(comm) {
			p.Exe = comm
		}
		procs = append(procs, p)
	}
	return procs, nil
}

// afterFields returns s without its first n whitespace-separated fields.
func afterFields(s string, n int) string {
	s = strings.TrimLeft(s, " \t")
	for range n {
		i := strings.IndexAny(s, " \t")
		if i < 0 {
			return ""
		}
		s = strings.TrimLeft(s[i:], " \t")
	}
	return strings.TrimRight(s, " \t\r\n")
}

func matchProcess(p process, name string) bool {
	return p.Name == name || (p.Exe != "" && filepath.Base(p.Exe) == name)
}

// exeHash hashes the executable at the process's path on disk. Unlike Linux
// there is no handle on the running image here, so a file swapped after
// start would be hashed instead (code signing makes that harder, not
// impossible).
func (c *Collector) exeHash(ctx context.Context, p process) (string, string, error) {
	if p.Exe == "" {
		return "", "", errors.New("executable path unknown")
	}
	f, err := os.Open(p.Exe)
	if err != nil {
		return p.Exe, "", err
	}
	defer f.Close()
	sum, err := hashExecutable(ctx, f)
	return p.Exe, sum, err
}
