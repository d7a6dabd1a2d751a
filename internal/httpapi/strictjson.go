package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
)

// DecodeStrict reads a JSON object of at most limit bytes from r into v, refusing (400, with what is
// wrong) what a lenient decoder would take silently: a field v does not have, a key given twice (the
// last one would win: {"id":0,"state":2,"id":5} would update task 5), or anything after the object.
func DecodeStrict(r io.Reader, limit int64, v any) error {
	body, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return Errorf(http.StatusBadRequest, "read the body: %v", err)
	}
	if int64(len(body)) > limit {
		return Errorf(http.StatusRequestEntityTooLarge, "body over %d bytes", limit)
	}
	if err := checkDuplicateKeys(body); err != nil {
		return Errorf(http.StatusBadRequest, "%v", err)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return Errorf(http.StatusBadRequest, "%v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Errorf(http.StatusBadRequest, "unexpected data after the JSON object")
	}
	return nil
}

// checkDuplicateKeys refuses an object (at any depth) that names a key twice.
func checkDuplicateKeys(body []byte) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	var walk func() error
	walk = func() error {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		switch tok {
		case json.Delim('{'):
			seen := map[string]bool{}
			for dec.More() {
				k, err := dec.Token()
				if err != nil {
					return err
				}
				key, _ := k.(string)
				if seen[key] {
					return fmt.Errorf("the key %q is given twice", key)
				}
				seen[key] = true
				if err := walk(); err != nil {
					return err
				}
			}
			_, err = dec.Token() // '}'
			return err
		case json.Delim('['):
			for dec.More() {
				if err := walk(); err != nil {
					return err
				}
			}
			_, err = dec.Token() // ']'
			return err
		}
		return nil
	}
	if err := walk(); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	return nil
}
