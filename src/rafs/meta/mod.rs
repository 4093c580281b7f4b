//! The blob compression context (`blob.meta`): chunk infos, zran contexts and dictionaries.
