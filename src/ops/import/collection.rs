//! Which legacy collection a file holds.

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Collection {
    Conversations,
    Chats,
    /// The `campaignparticipations` collection.
    Participations,
}

impl Collection {
    /// The name recorded in `import_sources.collection`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Conversations => "conversations",
            Self::Chats => "chats",
            Self::Participations => "participations",
        }
    }
}
