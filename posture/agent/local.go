package agent

import (
	"crypto/tls"
	"errors"
	"fmt"
	"time"
)

// SaveEnrollment writes an enrollment that was made without the device flow
// — `ztna dev` enrolling its own machine straight through the edge's
// registry — in the form Enroll writes, so Runner and ReadStatus use it
// like any other. The key must already be in stateDir (LoadOrCreateKey).
func SaveEnrollment(stateDir, server, deviceID string, certDER, caPEM []byte, at time.Time) error {
	return saveEnrollment(stateDir, certDER, caPEM, deviceState{DeviceID: deviceID, Server: server, EnrolledAt: at})
}

// DeviceCertificate returns the enrolled device's certificate and key from
// stateDir, for clients that authenticate as the device (the tunnel), and
// its ID. It checks, as the agent does, that they belong together.
func DeviceCertificate(stateDir string) (cert tls.Certificate, deviceID string, err error) {
	e, err := loadEnrolled(stateDir)
	if errors.Is(err, ErrNotEnrolled) {
		return tls.Certificate{}, "", fmt.Errorf("%w: run 'ztna agent enroll --server https://AUTH_HOST' first", err)
	}
	if err != nil {
		return tls.Certificate{}, "", err
	}
	return tls.Certificate{Certificate: [][]byte{e.cert.Raw}, PrivateKey: e.key, Leaf: e.cert}, e.dev.DeviceID, nil
}
