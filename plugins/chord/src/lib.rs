//! Chord ring rules, I/O-free.
