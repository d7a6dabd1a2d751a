// Package publicid turns imgmill's sequential internal task ids into opaque public ids and back, so the
// public frontend never shows or accepts a number that can be counted.
//
// A public id is the URL-safe base64 (no padding) of 32 bytes, 43 characters:
//
//	ciphertext = AES-256(encKey, bigEndian(id) || 8 zero bytes)     one block, 16 bytes
//	tag        = HMAC-SHA256(macKey, ciphertext)[:16]               16 bytes
//	public id  = base64url(ciphertext || tag)
//
// The encryption hides the id and with it how many tasks there are; the tag makes a forged or altered id
// fail before anything is decrypted, in constant time, and the zero half of the block is checked again
// after decryption. Both keys are derived from one server secret with HKDF-SHA256 under distinct labels,
// so every frontend sharing the secret (and every restart) agrees on every id. An id is the same public
// id forever: it identifies the task, it is not a session token.
package publicid

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// Len is the length of every public id in characters.
const Len = 43

// MinSecretLen is the shortest server secret accepted, in bytes.
const MinSecretLen = 32

const (
	blockLen = aes.BlockSize // ciphertext bytes
	tagLen   = 16
	rawLen   = blockLen + tagLen

	// HKDF labels; a new format gets new labels.
	encLabel    = "imgmill public id v1: AES-256 key"
	macLabel    = "imgmill public id v1: HMAC-SHA256 key"
	digestLabel = "imgmill v1: digest key"
)

// ErrInvalid is returned by Decode for anything that is not a public id made with the same secret.
var ErrInvalid = errors.New("not a valid public id")

// strict rejects encodings whose unused trailing bits are not zero: otherwise several strings would
// decode to the same bytes, and a changed last character could still be accepted.
var encoding = base64.RawURLEncoding.Strict()

// Codec encodes and decodes public ids under one server secret. It is safe for concurrent use.
type Codec struct {
	block     cipher.Block
	macKey    []byte
	digestKey []byte
}

// New returns a Codec for secret, which must be at least MinSecretLen bytes of high-entropy randomness.
func New(secret []byte) (*Codec, error) {
	if len(secret) < MinSecretLen {
		return nil, fmt.Errorf("public id secret is %d bytes, want at least %d", len(secret), MinSecretLen)
	}
	encKey, err := hkdf.Key(sha256.New, secret, nil, encLabel, 32)
	if err != nil {
		return nil, fmt.Errorf("derive public id key: %w", err)
	}
	macKey, err := hkdf.Key(sha256.New, secret, nil, macLabel, 32)
	if err != nil {
		return nil, fmt.Errorf("derive public id MAC key: %w", err)
	}
	digestKey, err := hkdf.Key(sha256.New, secret, nil, digestLabel, 32)
	if err != nil {
		return nil, fmt.Errorf("derive digest key: %w", err)
	}
	block, err := aes.NewCipher(encKey) // 32 bytes: AES-256
	if err != nil {
		return nil, fmt.Errorf("public id cipher: %w", err)
	}
	return &Codec{block: block, macKey: macKey, digestKey: digestKey}, nil
}

// Digest returns a keyed digest (HMAC-SHA256 under a key of its own, derived from the server secret) of
// parts, for the purpose named: the same for every frontend sharing the secret, revealing nothing of the
// parts, and impossible to make without the secret. 43 characters of base64url.
func (c *Codec) Digest(purpose string, parts ...string) string {
	m := hmac.New(sha256.New, c.digestKey)
	for _, p := range append([]string{purpose}, parts...) {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(p))) // lengths first: parts cannot run into each other
		m.Write(n[:])
		m.Write([]byte(p))
	}
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// Encode returns the public id of internal id.
func (c *Codec) Encode(id int64) string {
	var raw [rawLen]byte
	var plain [blockLen]byte
	binary.BigEndian.PutUint64(plain[:8], uint64(id))
	c.block.Encrypt(raw[:blockLen], plain[:])
	copy(raw[blockLen:], c.tag(raw[:blockLen]))
	return encoding.EncodeToString(raw[:])
}

// Decode returns the internal id of public id s, or ErrInvalid. It checks the form first (length and
// alphabet, no work beyond a scan), then the tag in constant time, and only then decrypts.
func (c *Codec) Decode(s string) (int64, error) {
	if !WellFormed(s) {
		return 0, ErrInvalid
	}
	var raw [rawLen]byte
	if n, err := encoding.Decode(raw[:], []byte(s)); err != nil || n != rawLen {
		return 0, ErrInvalid
	}
	if subtle.ConstantTimeCompare(c.tag(raw[:blockLen]), raw[blockLen:]) != 1 {
		return 0, ErrInvalid
	}
	var plain [blockLen]byte
	c.block.Decrypt(plain[:], raw[:blockLen])
	var zero [blockLen - 8]byte
	if subtle.ConstantTimeCompare(plain[8:], zero[:]) != 1 {
		return 0, ErrInvalid
	}
	return int64(binary.BigEndian.Uint64(plain[:8])), nil
}

func (c *Codec) tag(ciphertext []byte) []byte {
	m := hmac.New(sha256.New, c.macKey)
	m.Write(ciphertext)
	return m.Sum(nil)[:tagLen]
}

// WellFormed reports whether s has the form of a public id: Len characters of the URL-safe base64
// alphabet. It says nothing about whether the id is genuine.
func WellFormed(s string) bool {
	if len(s) != Len {
		return false
	}
	for i := 0; i < len(s); i++ {
		b := s[i]
		if !('A' <= b && b <= 'Z' || 'a' <= b && b <= 'z' || '0' <= b && b <= '9' || b == '-' || b == '_') {
			return false
		}
	}
	return true
}

// ParseSecret decodes a secret given as text (a flag or environment variable): base64, standard or
// URL-safe alphabet, with or without padding, of at least MinSecretLen bytes. Surrounding white space is
// ignored. `openssl rand -base64 32` makes one.
func ParseSecret(text string) ([]byte, error) {
	text = strings.TrimSpace(text)
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		b, err := enc.DecodeString(text)
		if err != nil {
			continue
		}
		if len(b) < MinSecretLen {
			return nil, fmt.Errorf("secret decodes to %d bytes, want at least %d (make one with: openssl rand -base64 32)", len(b), MinSecretLen)
		}
		return b, nil
	}
	return nil, errors.New("secret is not base64 (make one with: openssl rand -base64 32)")
}

// FormatSecret is the text form of secret that ParseSecret reads back (URL-safe base64, no padding).
func FormatSecret(secret []byte) string {
	return base64.RawURLEncoding.EncodeToString(secret)
}
