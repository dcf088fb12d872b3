package lmx

import "errors"

// Errors returned by every door to a lock table: the in-process [Broker], the
// network [Client] and the backends. Match them with [errors.Is]; the wire
// carries a stable code for each, so a remote error matches the same value.
var (
	// ErrLocked is returned by TryLock when the key is held by someone else, or
	// when taking it now would overtake a queued waiter.
	ErrLocked = errors.New("lmx: key is locked")

	// ErrNotHeld is returned by Unlock, Extend and Release when the lease they
	// name is not held: a wrong lock id, or a lease already released, expired or
	// otherwise ended. Nothing is changed. When the lease ended for a reason,
	// the error also matches that reason.
	ErrNotHeld = errors.New("lmx: lease not held")

	// ErrLeaseLost is the error of a lease the holder did not give up itself.
	// It is always wrapped together with the reason: ErrExpired, ErrPreempted,
	// ErrSessionLost, ErrForced or ErrClosed.
	ErrLeaseLost = errors.New("lmx: lease lost")

	// ErrExpired: the lease's TTL ran out before it was extended or released.
	ErrExpired = errors.New("lmx: lease expired")

	// ErrPreempted: a higher-priority waiter took the lease.
	ErrPreempted = errors.New("lmx: lease preempted")

	// ErrSessionLost: the connection to the broker that granted the lease was
	// lost, so the broker released the lease.
	ErrSessionLost = errors.New("lmx: session lost")

	// ErrForced: an administrator ended the lease with ForceUnlock.
	ErrForced = errors.New("lmx: lease forcibly unlocked")

	// ErrReleased is the error of a lease after Unlock or Release ended it.
	ErrReleased = errors.New("lmx: lease released")

	// ErrClosed is returned by calls on a closed Broker or Client, and by
	// waits that the Close cut short.
	ErrClosed = errors.New("lmx: closed")

	// ErrLimitMismatch: a request's Limit differs from the limit the key was
	// created with, while the key is live.
	ErrLimitMismatch = errors.New("lmx: limit differs from the key's limit")

	// ErrInvalidKey: the key is empty or longer than the broker's maximum key
	// length (DefaultMaxKeyLen unless set with WithMaxKeyLen).
	ErrInvalidKey = errors.New("lmx: invalid key")

	// ErrInvalidOption: a lock option has a value it cannot take, such as
	// Limit(0) or a negative TTL, or options that do not go together.
	ErrInvalidOption = errors.New("lmx: invalid option")

	// ErrProtocol: a peer sent bytes that are not the lmx protocol, or a
	// frame over the size limit, or a version this side does not speak.
	ErrProtocol = errors.New("lmx: protocol error")

	// ErrAuth: the broker refused the client's auth token.
	ErrAuth = errors.New("lmx: unauthorized")

	// ErrBusy: the broker refused a request or a session because a limit was
	// reached (sessions per broker, waiters per session).
	ErrBusy = errors.New("lmx: broker busy")

	// ErrInvalidID is returned by ParseID for text that is not a lock id.
	ErrInvalidID = errors.New("lmx: not a lock id")

	// ErrStaleToken is returned by Fence.Check for a token lower than one the
	// fence has already seen for the same key.
	ErrStaleToken = errors.New("lmx: stale fencing token")
)

// lost returns the error of a lease lost for reason.
func lost(reason error) error { return &lostError{reason} }

// lostError matches both ErrLeaseLost and its reason.
type lostError struct{ reason error }

func (e *lostError) Error() string   { return ErrLeaseLost.Error() + ": " + e.reason.Error() }
func (e *lostError) Unwrap() []error { return []error{ErrLeaseLost, e.reason} }
