package frontend

import (
	"bufio"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"

	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/wire"
)

// MinAPIKeyLen is the shortest API key accepted: long enough that guessing one is hopeless.
const MinAPIKeyLen = 32

// APIKeys are the keys that name a client: an upload that presents one (Authorization: Bearer KEY,
// or X-API-Key: KEY) is owned by "key:NAME" rather than by its address, so a client keeps its share
// of the workers whatever network it uploads from, and its rate limit is its own.
//
// Only digests are kept: a presented key is hashed and looked up by its digest, so the comparison
// reveals nothing of the stored keys through its timing.
type APIKeys struct {
	names map[[sha256.Size]byte]string
}

// LoadAPIKeys reads an API key file: lines "NAME KEY", blank lines and lines starting with # ignored.
// Names are printable ASCII without spaces; keys are at least MinAPIKeyLen printable characters, each
// listed once.
func LoadAPIKeys(path string) (*APIKeys, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("api keys: %w", err)
	}
	defer f.Close()
	k, err := ParseAPIKeys(f)
	if err != nil {
		return nil, fmt.Errorf("api keys %s: %w", path, err)
	}
	return k, nil
}

// ParseAPIKeys reads an API key file's contents (see LoadAPIKeys).
func ParseAPIKeys(r io.Reader) (*APIKeys, error) {
	k := &APIKeys{names: map[[sha256.Size]byte]string{}}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) != 2 {
			return nil, fmt.Errorf("line %d: want NAME KEY", n)
		}
		name, key := fields[0], fields[1]
		if err := wire.CheckOwner(ownerOfKey(name)); err != nil {
			return nil, fmt.Errorf("line %d: name %q: %w", n, name, err)
		}
		if len(key) < MinAPIKeyLen || httpapi.CheckToken(key) != nil {
			return nil, fmt.Errorf("line %d: the key of %s must be at least %d printable characters", n, name, MinAPIKeyLen)
		}
		d := sha256.Sum256([]byte(key))
		if _, dup := k.names[d]; dup {
			return nil, fmt.Errorf("line %d: the key of %s is listed twice", n, name)
		}
		k.names[d] = name
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return k, nil
}

// Len is how many keys there are.
func (k *APIKeys) Len() int { return len(k.names) }

// ownerOfKey is the owner of uploads made with the key named name.
func ownerOfKey(name string) string { return "key:" + name }

// errUnknownAPIKey answers a request that presents a key not in the file.
var errUnknownAPIKey = &httpapi.Error{Status: http.StatusUnauthorized, Msg: "unknown API key"}

// presentedKey is the API key r presents, "" for none.
func presentedKey(r *http.Request) string {
	if v := r.Header.Get(wire.APIKeyHeader); v != "" {
		return strings.TrimSpace(v)
	}
	scheme, v, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if ok && strings.EqualFold(scheme, "Bearer") {
		return strings.TrimSpace(v)
	}
	return ""
}

// owner names who makes upload r: "key:NAME" for a listed key, errUnknownAPIKey for a key that is not,
// and the client's address (see httpapi.ClientAddr) for a request without one. Without keys (k nil)
// every request is owned by its address, whatever it presents.
func (k *APIKeys) owner(r *http.Request, trustProxy bool) (string, error) {
	key := presentedKey(r)
	if k == nil || key == "" {
		return httpapi.ClientAddr(r, trustProxy), nil
	}
	if name, ok := k.names[sha256.Sum256([]byte(key))]; ok {
		return ownerOfKey(name), nil
	}
	return "", errUnknownAPIKey
}
