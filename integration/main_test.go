package integration

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if any goroutine outlives the tests: every
// dev system a test starts (edge, IdP, whoami, audit writer, watchers,
// WebSocket readers) must be fully stopped by its cleanup.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
