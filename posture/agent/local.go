package agent

import "time"

// SaveEnrollment writes an enrollment that was made without the device flow
// — `ztna dev` enrolling its own machine straight through the edge's
// registry — in the form Enroll writes, so Runner and ReadStatus use it
// like any other. The key must already be in stateDir (LoadOrCreateKey).
func SaveEnrollment(stateDir, server, deviceID string, certDER, caPEM []byte, at time.Time) error {
	return saveEnrollment(stateDir, certDER, caPEM, deviceState{DeviceID: deviceID, Server: server, EnrolledAt: at})
}
