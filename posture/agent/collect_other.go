//go:build !linux && !darwin && !windows

package agent

import (
	"context"
	"errors"
)

// Other platforms build but report every fact as unknown and no EDR as
// running, which the edge treats as failing any profile that needs them.

func systemBinDirs() []string { return []string{"/usr/bin", "/usr/sbin", "/bin", "/sbin"} }

var errUnsupported = errors.New("not supported on this platform")

func (c *Collector) osInfo(context.Context) (OS, error) { return OS{}, errUnsupported }

func (c *Collector) diskEncrypted(context.Context) (*bool, error) { return nil, nil }

func (c *Collector) firewallActive(context.Context) (*bool, error) { return nil, nil }

func (c *Collector) screenLock(context.Context) (*bool, error) { return nil, nil }

func (c *Collector) listProcesses(context.Context) ([]process, error) { return nil, errUnsupported }

func matchProcess(process, string) bool { return false }

func (c *Collector) exeHash(context.Context, process) (string, string, error) {
	return "", "", errUnsupported
}
