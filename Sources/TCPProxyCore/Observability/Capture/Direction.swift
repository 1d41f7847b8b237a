/// Which way bytes travel through a bridge: upstream is client → server, downstream is server → client.
public enum Direction: String, Sendable, Hashable {
    /// Client → proxy → server.
    case upstream
    /// Server → proxy → client.
    case downstream
}
