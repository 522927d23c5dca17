package store

import (
	"errors"
	"fmt"
	"time"
)

// Limits shared by every implementation, so a caller that works against one
// store works against all of them. They bound what a single request can make
// the store hold in memory or on disk.
const (
	// MaxKeySize is the longest bucket name or key, in bytes.
	MaxKeySize = 1 << 10
	// MaxValueSize is the longest value, in bytes.
	MaxValueSize = 1 << 20
)

var (
	// ErrInvalid wraps every argument error (empty or oversized bucket or
	// key, oversized value, negative ttl). It is a programming error in the
	// caller, never a "not found".
	ErrInvalid = errors.New("store: invalid argument")
	// ErrClosed is returned by every method called after Close.
	ErrClosed = errors.New("store: closed")
)

// CheckKey validates a bucket name and key. Implementations call it first so
// they all reject the same inputs with the same error.
func CheckKey(bucket, key string) error {
	if err := CheckBucket(bucket); err != nil {
		return err
	}
	switch {
	case key == "":
		return fmt.Errorf("%w: empty key", ErrInvalid)
	case len(key) > MaxKeySize:
		return fmt.Errorf("%w: key is %d bytes, limit %d", ErrInvalid, len(key), MaxKeySize)
	}
	return nil
}

// CheckBucket validates a bucket name (List takes no key).
func CheckBucket(bucket string) error {
	switch {
	case bucket == "":
		return fmt.Errorf("%w: empty bucket name", ErrInvalid)
	case len(bucket) > MaxKeySize:
		return fmt.Errorf("%w: bucket name is %d bytes, limit %d", ErrInvalid, len(bucket), MaxKeySize)
	}
	return nil
}

// CheckPut validates the arguments of Put and PutIfAbsent.
func CheckPut(bucket, key string, value []byte, ttl time.Duration) error {
	if err := CheckKey(bucket, key); err != nil {
		return err
	}
	switch {
	case len(value) > MaxValueSize:
		return fmt.Errorf("%w: value is %d bytes, limit %d", ErrInvalid, len(value), MaxValueSize)
	case ttl < 0:
		return fmt.Errorf("%w: negative ttl %s", ErrInvalid, ttl)
	}
	return nil
}
