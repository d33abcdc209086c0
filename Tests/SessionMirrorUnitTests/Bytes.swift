/// A key or value as the bytes Redis and the snapshot hold.
func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }
