//! host-sim: placeholder until the host-sim issue lands.
