// Package files reads small files that hold keys, certificates and state,
// bounded and with the metadata the caller needs to check permissions. It
// never follows anything but a regular file and never reads past the limit.
package files

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
)

// ReadRegular reads path, which must be a regular file of at most limit
// bytes, and returns its contents with its FileInfo (for a mode check). A
// missing file's error wraps fs.ErrNotExist.
func ReadRegular(path string, limit int64) ([]byte, fs.FileInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, nil, errors.New("not a regular file")
	}
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, nil, err
	}
	if int64(len(data)) > limit {
		return nil, nil, fmt.Errorf("larger than %d bytes", limit)
	}
	return data, fi, nil
}
