mod dsl;
mod examples;
mod guest_errors;
mod header_maps;
mod probe;
mod serve;
mod stop_all;
