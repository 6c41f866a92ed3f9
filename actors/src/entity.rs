//! The supervised-entity pattern, written once for every kind (`TaskActor`,
//! `PipelineActor`, later `LoopActor` and `ScheduleActor`).
//!
//! An entity actor holds its kind's record while the entity is live and changes it only
//! through the journal:
//! - `commit`: apply events with the pure model, journal them (with transitions of
//!   other entities, if given, in the same transaction), and only then adopt the record;
//!   the actor handles nothing else meanwhile (`ctx.wait`), so its transitions apply in
//!   order while the journal batches many entities into one commit;
//! - `commit_until_durable`: for transitions that must happen (a result): retried until
//!   the journal takes them; an impossible one stops the actor, and its supervisor
//!   restarts it from the journal;
//! - `join`: take part in another entity's commit (a pipeline cancelling its steps):
//!   offer transitions, wait for the coordinator's verdict, adopt them if committed;
//! - `end`: the record is terminal and durable: tell the registry, which drops the
//!   actor (memory follows live work);
//! - `started` / `restarting`: after a restart, reload the record from the journal and
//!   resume from its state.
//!
//! Must never: adopt a record the journal has not committed; block the actor thread
//! (reads go to `spawn_blocking`); know any kind's rules (those live in `model/`).

use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::error::EngineError;
use crate::journal::{Append, Store, Table};
use crate::model::{Entity, Record, Transition};

/// When the journal refuses a transition that must happen (disk full), try again.
const JOURNAL_RETRY: Duration = Duration::from_secs(1);

/// Told to the registry (the Engine) once an entity's terminal state is durable.
#[derive(Message)]
#[rtype(result = "()")]
pub struct EntityEnded(pub Record);

/// What the pattern needs of every entity actor.
pub struct EntityCore<E: Entity> {
    pub record: E,
    journal: Recipient<Append>,
    registry: Recipient<EntityEnded>,
    store: Store,
    reload: bool,
    ended: bool,
}

impl<E: Entity> EntityCore<E> {
    pub fn new(
        record: E,
        journal: Recipient<Append>,
        registry: Recipient<EntityEnded>,
        store: Store,
    ) -> EntityCore<E> {
        EntityCore {
            record,
            journal,
            registry,
            store,
            reload: false,
            ended: false,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }
}

/// An actor that is one live entity of kind `Entity`.
pub trait EntityActor: Actor<Context = Context<Self>> + Supervised {
    type Entity: Table;

    fn core(&self) -> &EntityCore<Self::Entity>;
    fn core_mut(&mut self) -> &mut EntityCore<Self::Entity>;

    /// Continues from whatever state the record is in: at start, and after a reload.
    fn resume(&mut self, ctx: &mut Context<Self>);

    /// Last words before the registry drops the actor (answer waiters, release slots).
    fn ending(&mut self, _ctx: &mut Context<Self>) {}
}

type Event<A> = <<A as EntityActor>::Entity as Entity>::Event;

/// The steps of the pattern, for every `EntityActor`.
pub trait Lifecycle: EntityActor {
    fn record(&self) -> &Self::Entity {
        &self.core().record
    }

    /// The transitions `events` make, applied in order to the current record, and the
    /// record after the last.
    fn plan(
        &self,
        events: Vec<Event<Self>>,
    ) -> Result<(Vec<Transition>, Self::Entity), EngineError> {
        let mut next = self.core().record.clone();
        let mut transitions = Vec::with_capacity(events.len());
        for event in events {
            next = Self::Entity::apply(Some(&next), &event)?;
            transitions.push(Self::Entity::transition(event, next.clone()));
        }
        Ok((transitions, next))
    }

    /// Journals `events` of this entity, and `joint` transitions of others in the same
    /// transaction; only then adopts the new record and runs `then`.
    fn commit(
        &mut self,
        events: Vec<Event<Self>>,
        joint: Vec<Transition>,
        ctx: &mut Context<Self>,
        then: impl FnOnce(&mut Self, &mut Context<Self>, Result<(), EngineError>) + 'static,
    ) {
        let (mut transitions, next) = match self.plan(events) {
            Ok(planned) => planned,
            Err(e) => return then(self, ctx, Err(e)),
        };
        transitions.extend(joint);
        let fut = self.core().journal.send(Append::new(transitions));
        ctx.wait(fut.into_actor(self).map(move |res, act, ctx| {
            let res = match res {
                Ok(Ok(())) => {
                    act.core_mut().record = next;
                    Ok(())
                }
                Ok(Err(e)) => Err(EngineError::from(e)),
                Err(e) => Err(EngineError::from(e)),
            };
            then(act, ctx, res);
        }));
    }

    /// `commit` for transitions that must happen: retried until the journal takes them,
    /// so that a full disk delays a result but never loses it.
    fn commit_until_durable(
        &mut self,
        events: Vec<Event<Self>>,
        ctx: &mut Context<Self>,
        then: impl FnOnce(&mut Self, &mut Context<Self>) + 'static,
    ) {
        let retry = events.clone();
        self.commit(events, Vec::new(), ctx, move |act, ctx, res| match res {
            Ok(()) => then(act, ctx),
            Err(EngineError::Journal(e)) => {
                tracing::error!(kind = %Self::Entity::KIND, id = %act.record().id(), error = %e, "journal refused a transition; retrying");
                ctx.run_later(JOURNAL_RETRY, move |act, ctx| {
                    act.commit_until_durable(retry, ctx, then)
                });
            }
            Err(e) => {
                tracing::error!(kind = %Self::Entity::KIND, id = %act.record().id(), error = %e, "impossible transition; reloading from the journal");
                ctx.stop(); // the supervisor restarts the actor, which reloads
            }
        });
    }

    /// Commits terminal `events` until durable, then ends.
    fn finish(&mut self, events: Vec<Event<Self>>, ctx: &mut Context<Self>) {
        self.commit_until_durable(events, ctx, |act, ctx| act.end(ctx));
    }

    /// Takes part in another entity's transaction: returns the transitions `events`
    /// make, and waits (handling nothing else) for the coordinator's verdict; on
    /// `true` (committed) adopts them. Then `then` with the verdict.
    fn join(
        &mut self,
        events: Vec<Event<Self>>,
        verdict: oneshot::Receiver<bool>,
        ctx: &mut Context<Self>,
        then: impl FnOnce(&mut Self, &mut Context<Self>, bool) + 'static,
    ) -> Result<Vec<Transition>, EngineError> {
        let (transitions, next) = self.plan(events)?;
        ctx.wait(verdict.into_actor(self).map(move |verdict, act, ctx| {
            let committed = verdict.unwrap_or(false);
            if committed {
                act.core_mut().record = next;
            }
            then(act, ctx, committed);
        }));
        Ok(transitions)
    }

    /// The entity is terminal (and durable): last words, then the registry forgets it.
    fn end(&mut self, ctx: &mut Context<Self>) {
        if self.core().ended {
            return;
        }
        self.core_mut().ended = true;
        self.ending(ctx);
        let ended = self.core().record.clone().into_record();
        self.core().registry.do_send(EntityEnded(ended));
    }

    /// Call from `Actor::started`: resumes, after reloading the record if restarted.
    fn start_entity(&mut self, ctx: &mut Context<Self>) {
        if !self.core().reload {
            return self.resume(ctx);
        }
        self.core_mut().reload = false;
        let store = self.core().store.clone();
        let id = self.record().id().to_string();
        let read = async move {
            tokio::task::spawn_blocking(move || store.get::<Self::Entity>(&id)).await
        };
        ctx.wait(read.into_actor(self).map(|res, act, ctx| match res {
            Ok(Ok(Some(record))) => {
                act.core_mut().record = record;
                act.resume(ctx);
            }
            other => {
                tracing::error!(kind = %Self::Entity::KIND, id = %act.record().id(), result = ?other.map(|r| r.map(|o| o.is_some())), "could not reload");
                act.end(ctx);
            }
        }));
    }

    /// Call from `Supervised::restarting`: the next start reloads from the journal.
    fn restart_entity(&mut self) {
        self.core_mut().reload = true;
    }
}

impl<A: EntityActor> Lifecycle for A {}

/// Told to an owner (a pipeline; later a loop) when one of its tasks ended. The Engine
/// routes it by the task's `owner`; the owner never polls.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct OwnedTaskEnded {
    pub task_id: String,
    pub status: crate::model::TaskStatus,
    /// Why it ended (its record's reason), for the owner's history.
    pub reason: Option<String>,
}
