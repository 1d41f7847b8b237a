/// Thrown by a ``BridgeStarter`` that turns an admitted client away before any bridge exists (transparent
/// mode: a loop, or no original destination). The starter has logged and counted it; the listener's
/// failure path gives back the client's slot, and NIO closes the connection.
struct ClientRefusal: Error, Hashable {
    /// `loopRefused` or `noOriginalDestination`.
    var reason: CloseReason
}
