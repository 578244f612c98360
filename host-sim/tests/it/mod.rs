mod dsl;
mod examples;
mod guest_errors;
mod probe;
mod serve;
