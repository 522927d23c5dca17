// Package httperr separates what a user may see about a failed request from
// the cause that only goes to the log. Business code returns errors; the edge
// renders them in one place (package web): an *Error's Status, Code, Title,
// Message and Hint are shown, its Cause is logged and never sent.
package httperr

import (
	"errors"
	"fmt"
	"net/http"
)

// Error is a user-facing failure.
type Error struct {
	Status  int    // HTTP status
	Code    string // stable machine-readable code, e.g. "unauthenticated", "access_denied"
	Title   string // short heading for the page
	Message string // what happened, safe to show
	Hint    string // what the user can do about it, safe to show
	Rule    string // the policy rule that decided, when a decision did
	// LoginURL, when set, is where the user can (re-)authenticate; browsers
	// get a link, API clients a JSON field.
	LoginURL string
	// Checks are the individual findings behind a device-trust refusal
	// (posture, quarantine): what was detected and how to fix each.
	Checks []Check
	Cause  error // internal detail: logged, never shown
}

// Check is one finding shown on a refusal page: what was detected and what
// the user can do about it.
type Check struct {
	Check  string `json:"check"`  // stable identifier, e.g. "edr_running"
	Reason string `json:"reason"` // what was detected
	Fix    string `json:"fix"`    // how to fix it
}

func (e *Error) Error() string {
	if e.Cause != nil {
		return fmt.Sprintf("%s: %s: %v", e.Code, e.Message, e.Cause)
	}
	return e.Code + ": " + e.Message
}

func (e *Error) Unwrap() error { return e.Cause }

// New returns a user-facing error with the given status and code.
func New(status int, code, message string) *Error {
	return &Error{Status: status, Code: code, Title: http.StatusText(status), Message: message}
}

// BadRequest is a 400 for malformed input; cause is kept for the log.
func BadRequest(message string, cause error) *Error {
	e := New(http.StatusBadRequest, "bad_request", message)
	e.Cause = cause
	return e
}

// As returns err as an *Error. Anything that is not one becomes an opaque 500
// whose cause is err: internal failures never leak to users.
func As(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return &Error{
		Status:  http.StatusInternalServerError,
		Code:    "internal_error",
		Title:   "Something went wrong",
		Message: "The access proxy could not handle this request.",
		Hint:    "Try again in a moment. If it keeps happening, tell your IT team the time of the error.",
		Cause:   err,
	}
}
