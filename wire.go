package lmx

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/oklog/ulid/v2"
)

// The wire protocol, specified in PROTOCOL.md. Every frame is a 12-byte
// header and a payload:
//
//	 0       1       2               4               8              12
//	+-------+-------+---------------+---------------+---------------+
//	|  op   | flags |  code (u16)   | request id    | payload length|
//	+-------+-------+---------------+---------------+---------------+
//	| payload (length bytes) ...
//
// Integers are big-endian in the header; in payloads they are uvarints
// (signed ones zig-zag varints), strings a uvarint length and the bytes,
// lock and session ids their 16 ULID bytes, times unix nanoseconds and
// durations nanoseconds. The ops below name each payload's fields; codec.go
// holds the one encoder and decoder of each.
const headerLen = 12

// protocolVersion is the version a Hello offers and a Welcome accepts.
const protocolVersion = 5

// magic opens every Hello, so that a stray client is told apart at once.
const magic = "LMX\x00"

// An op is a frame's kind. Each constant says its payload, in the notation
// of PROTOCOL.md; codec.go encodes and decodes each, in this order.
type op uint8

// Ops from client to broker.
const (
	// Hello opens the session: string magic, byte version, string auth
	// token. Answered by Welcome, or Error and the connection closed.
	opHello op = 0x01
	// Lock asks for key: string key, duration ttl (0 none), uvarint limit,
	// varint priority, string owner; with flagPreempt, then duration grace;
	// with flagLockDelay, then duration lock-delay; with flagKeepAlive,
	// then duration keepalive bound. Answered by Granted or Error.
	opLock op = 0x02
	// Release undoes one grant: string key, id lock id. Answered by OK.
	opRelease op = 0x03
	// Extend moves an expiry: string key, id lock id, duration ttl.
	// Answered by OK with time new expiry.
	opExtend op = 0x04
	// Force is ForceUnlock: string key. Answered by OK.
	opForce op = 0x05
	// Inspect: string key. Answered by Info.
	opInspect op = 0x06
	// Stats: no payload. Answered by StatsOK.
	opStats op = 0x07
	// Ping: no payload. Answered by Pong; request id 0 is a heartbeat.
	opPing op = 0x08
	// Cancel: no payload; the request id names the Lock or Watch.
	opCancel op = 0x09
	// Watch: string key prefix. Answered by OK, then Events.
	opWatch op = 0x0a
	// List: string key prefix, uvarint limit. Answered by Keys.
	opList op = 0x0b
	// Stopped answers a Stop: string key, uvarint its number; request id 0.
	opStopped op = 0x0c
)

// Ops from broker to client.
const (
	// Welcome accepts a Hello: byte version, id session, duration heartbeat
	// interval, duration session timeout, uvarint max frame, uvarint max
	// key length.
	opWelcome op = 0x81
	// Granted: id lock id, uvarint fencing token, time expiry.
	opGranted op = 0x82
	// OK: as the request says; time new expiry for an Extend, else empty.
	opOK op = 0x83
	// Error: string message; the code is the header's.
	opError op = 0x84
	// Ended: string key, id lock id; the reason is the header's code;
	// request id 0.
	opEnded op = 0x85
	// Info: uvarint limit; uvarint n, n × (id, uvarint token, string owner,
	// byte shared, uvarint count, time expiry, time granted); uvarint m,
	// m × (string owner, varint priority, byte shared).
	opInfo op = 0x86
	// StatsOK: nine uvarint counts, then for each histogram its bucket
	// counts and a duration sum.
	opStatsOK op = 0x87
	// Pong answers a Ping: no payload.
	opPong op = 0x88
	// Event: string key, id lock id, uvarint token, string owner, time,
	// uvarint missed; the type is the header's code.
	opEvent op = 0x89
	// Revoke: string key, id lock id; request id 0.
	opRevoke op = 0x8a
	// Keys: uvarint n, n × (string key, uvarint limit, uvarint holders,
	// uvarint waiters).
	opKeys op = 0x8b
	// Next names a queued Lock (the request id) to follow a lease: id the
	// lease's lock id, id the Lock's lock id, uvarint its token.
	opNext op = 0x8c
	// Stop: string key, uvarint number (never 0); request id 0.
	opStop op = 0x8d
)

// Lock flags.
const (
	flagWait             = 1 << 0
	flagShared           = 1 << 1
	flagKeepOnDisconnect = 1 << 2
	flagNoPreempt        = 1 << 3
	flagPreempt          = 1 << 4 // a duration grace follows the owner
	flagLockDelay        = 1 << 5 // a duration lock-delay follows
	flagKeepAlive        = 1 << 6 // a duration KeepAlive bound follows
)

// header is a decoded frame header.
type header struct {
	op     op
	flags  uint8
	code   uint16
	id     uint32
	length uint32
}

func parseHeader(b []byte) header {
	return header{
		op:     op(b[0]),
		flags:  b[1],
		code:   binary.BigEndian.Uint16(b[2:]),
		id:     binary.BigEndian.Uint32(b[4:]),
		length: binary.BigEndian.Uint32(b[8:]),
	}
}

// errMalformed is what a decoder returns for a payload that does not parse.
var errMalformed = errors.New("malformed payload")

// decoder reads payload fields; the first failure sticks.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail() {
	if d.err == nil {
		d.err = errMalformed
	}
	d.b = nil
}

func (d *decoder) uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

// bytes returns the next length-prefixed field, aliasing the payload.
func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if n > uint64(len(d.b)) {
		d.fail()
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) string() string { return string(d.bytes()) }

func (d *decoder) ulid() (id ulid.ULID) {
	if len(d.b) < len(id) {
		d.fail()
		return id
	}
	copy(id[:], d.b)
	d.b = d.b[len(id):]
	return id
}

func (d *decoder) byte() byte {
	if len(d.b) < 1 {
		d.fail()
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

// duration reads nanoseconds, refusing values past time.Duration's range.
func (d *decoder) duration() time.Duration {
	v := d.uvarint()
	if v > 1<<63-1 {
		d.fail()
		return 0
	}
	return time.Duration(v)
}

// time reads unix nanoseconds; 0 is the zero time.
func (d *decoder) time() time.Time {
	v := d.varint()
	if v == 0 {
		return time.Time{}
	}
	return time.Unix(0, v)
}

// done reports the first failure, or trailing bytes.
func (d *decoder) done() error {
	if d.err == nil && len(d.b) != 0 {
		d.err = fmt.Errorf("%d trailing bytes", len(d.b))
	}
	return d.err
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendTime(b []byte, t time.Time) []byte {
	if t.IsZero() {
		return binary.AppendVarint(b, 0)
	}
	return binary.AppendVarint(b, t.UnixNano())
}

// Error codes carried in the code field of Error frames. They are stable:
// each maps back to one sentinel error.
const (
	codeLocked        uint16 = 1
	codeNotHeld       uint16 = 2
	codeLimitMismatch uint16 = 3
	codeInvalidKey    uint16 = 4
	codeInvalidOption uint16 = 5
	codeClosed        uint16 = 6
	codeCanceled      uint16 = 7
	codeProtocol      uint16 = 8
	codeAuth          uint16 = 9
	codeBusy          uint16 = 10
)

// Reasons carried in the code field of Ended frames.
const (
	reasonReleased    uint16 = 1
	reasonExpired     uint16 = 2
	reasonPreempted   uint16 = 3
	reasonSessionLost uint16 = 4
	reasonForced      uint16 = 5
	reasonClosed      uint16 = 6
)

// codeErrors pairs codes and sentinels, most specific first: an error that
// wraps two sentinels (ErrNotHeld wrapping ErrClosed) takes the first.
var codeErrors = []struct {
	code uint16
	err  error
}{
	{codeNotHeld, ErrNotHeld},
	{codeLocked, ErrLocked},
	{codeLimitMismatch, ErrLimitMismatch},
	{codeInvalidKey, ErrInvalidKey},
	{codeInvalidOption, ErrInvalidOption},
	{codeAuth, ErrAuth},
	{codeBusy, ErrBusy},
	{codeClosed, ErrClosed},
	{codeProtocol, ErrProtocol},
}

// errorCode returns the wire code of err.
func errorCode(err error) uint16 {
	for _, c := range codeErrors {
		if errors.Is(err, c.err) {
			return c.code
		}
	}
	return codeProtocol
}

// codeError turns an Error frame back into an error matching its sentinel,
// keeping the broker's message.
func codeError(code uint16, msg string) error {
	sentinel := ErrProtocol
	for _, c := range codeErrors {
		if c.code == code {
			sentinel = c.err
		}
	}
	if msg == "" || msg == sentinel.Error() {
		return sentinel
	}
	return &remoteError{sentinel: sentinel, msg: msg}
}

// remoteError is an error from the broker: its message, matching the
// sentinel of its code.
type remoteError struct {
	sentinel error
	msg      string
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.sentinel }

var reasonErrors = map[uint16]error{
	reasonReleased:    ErrReleased,
	reasonExpired:     errExpired,
	reasonPreempted:   errPreempted,
	reasonSessionLost: errSessionLost,
	reasonForced:      errForced,
	reasonClosed:      errClosed,
}

// reasonCode returns the wire reason of a lease's end.
func reasonCode(reason error) uint16 {
	switch {
	case errors.Is(reason, ErrReleased):
		return reasonReleased
	case errors.Is(reason, ErrExpired):
		return reasonExpired
	case errors.Is(reason, ErrPreempted):
		return reasonPreempted
	case errors.Is(reason, ErrForced):
		return reasonForced
	case errors.Is(reason, ErrClosed):
		return reasonClosed
	}
	return reasonSessionLost
}
