package etcd

// SetExpiring makes f run in each lease expiry between taking the lease out
// of its session and deleting its key; nil removes it.
func SetExpiring(f func()) {
	if f == nil {
		expiring.Store(nil)
		return
	}
	expiring.Store(&f)
}

// SetGranting makes f run in each grant before it writes its key; nil
// removes it.
func SetGranting(f func()) {
	if f == nil {
		granting.Store(nil)
		return
	}
	granting.Store(&f)
}

// SetHearing makes f run for each word of an inbox once it is handled; nil
// removes it.
func SetHearing(f func()) {
	if f == nil {
		hearing.Store(nil)
		return
	}
	hearing.Store(&f)
}
