--
-- PostgreSQL database dump
--


-- Dumped from database version 15.18 (Debian 15.18-0+deb12u1)
-- Dumped by pg_dump version 15.18 (Debian 15.18-0+deb12u1)

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

--
-- Name: tasks_wake(boolean, text, text); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tasks_wake(claimable boolean, channel text, origin text) RETURNS boolean
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF claimable THEN
        PERFORM pg_notify(channel, origin);
    END IF;
    RETURN claimable;
END
$$;


SET default_tablespace = '';

SET default_table_access_method = heap;

--
-- Name: schema_migrations; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.schema_migrations (
    version integer NOT NULL,
    name text NOT NULL,
    applied_at timestamp with time zone NOT NULL
);


--
-- Name: task_ids; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.task_ids (
    singleton boolean DEFAULT true NOT NULL,
    next_id bigint NOT NULL,
    CONSTRAINT task_ids_singleton_check CHECK (singleton)
);


--
-- Name: tasks; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.tasks (
    id bigint NOT NULL,
    state smallint NOT NULL,
    pending boolean NOT NULL,
    attempts integer DEFAULT 0 NOT NULL,
    max_attempts integer NOT NULL,
    token bigint DEFAULT 0 NOT NULL,
    op text DEFAULT ''::text NOT NULL,
    error text DEFAULT ''::text NOT NULL,
    created_at timestamp with time zone NOT NULL,
    started_at timestamp with time zone,
    finished_at timestamp with time zone,
    lease_until timestamp with time zone,
    retry_at timestamp with time zone,
    retries integer DEFAULT 0 NOT NULL,
    idem_key text,
    CONSTRAINT tasks_state_check CHECK (((state >= 0) AND (state <= 3)))
)
WITH (autovacuum_vacuum_scale_factor='0.02');


--
-- Data for Name: schema_migrations; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.schema_migrations VALUES (1, '0001_tasks.sql', '2026-12-01 12:00:00+00');
INSERT INTO public.schema_migrations VALUES (2, '0002_retries.sql', '2026-12-01 12:00:00+00');


--
-- Data for Name: task_ids; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.task_ids VALUES (true, 9);


--
-- Data for Name: tasks; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.tasks VALUES (0, 2, false, 1, 3, 1, 'grayscale', '', '2026-12-01 12:00:00+00', '2026-12-01 12:01:00+00', '2026-12-01 12:02:00+00', NULL, NULL, 0, NULL);
INSERT INTO public.tasks VALUES (1, 3, false, 1, 1, 1, 'rotate:90', 'decode: not an image', '2026-12-01 12:03:00+00', '2026-12-01 12:04:00+00', '2026-12-01 12:05:00+00', NULL, NULL, 0, NULL);
INSERT INTO public.tasks VALUES (2, 3, false, 1, 1, 1, '', 'lease lapsed on attempt 1 of 1', '2026-12-01 12:06:00+00', '2026-12-01 12:07:00+00', '2026-12-01 12:08:00+00', '2026-12-01 12:08:00+00', NULL, 0, NULL);
INSERT INTO public.tasks VALUES (3, 0, false, 0, 3, 1, 'flip', 'storage unavailable', '2026-12-01 12:09:00+00', '2026-12-01 12:10:00+00', NULL, NULL, '2026-12-01 12:55:26.477848+00', 1, NULL);
INSERT INTO public.tasks VALUES (4, 1, false, 1, 3, 1, 'swap', '', '2026-12-01 12:11:00+00', '2026-12-01 12:12:00+00', NULL, '2026-12-01 13:12:00+00', NULL, 0, NULL);
INSERT INTO public.tasks VALUES (5, 2, false, 1, 3, 1, '', '', '2026-12-01 12:13:00+00', '2026-12-01 12:14:00+00', '2026-12-01 12:15:00+00', NULL, NULL, 0, 'fe-0123456789abcdef');
INSERT INTO public.tasks VALUES (6, 0, true, 0, 3, 0, 'blur:2', '', '2026-12-01 12:16:00+00', NULL, NULL, NULL, NULL, 0, NULL);
INSERT INTO public.tasks VALUES (7, 0, false, 0, 5, 0, 'invert', '', '2026-12-01 12:17:00+00', NULL, NULL, NULL, NULL, 0, NULL);
INSERT INTO public.tasks VALUES (8, 3, false, 0, 3, 0, '', 'set to failed', '2026-12-01 12:18:00+00', NULL, '2026-12-01 12:19:00+00', NULL, NULL, 0, NULL);


--
-- Name: schema_migrations schema_migrations_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.schema_migrations
    ADD CONSTRAINT schema_migrations_pkey PRIMARY KEY (version);


--
-- Name: task_ids task_ids_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.task_ids
    ADD CONSTRAINT task_ids_pkey PRIMARY KEY (singleton);


--
-- Name: tasks tasks_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.tasks
    ADD CONSTRAINT tasks_pkey PRIMARY KEY (id);


--
-- Name: tasks_claimable; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX tasks_claimable ON public.tasks USING btree (id) WHERE ((state = 0) AND (NOT pending) AND (retry_at IS NULL));


--
-- Name: tasks_failed; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX tasks_failed ON public.tasks USING btree (id) WHERE (state = 3);


--
-- Name: tasks_idem; Type: INDEX; Schema: public; Owner: -
--

CREATE UNIQUE INDEX tasks_idem ON public.tasks USING btree (idem_key) WHERE (idem_key IS NOT NULL);


--
-- Name: tasks_lease; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX tasks_lease ON public.tasks USING btree (lease_until) WHERE (state = 1);


--
-- Name: tasks_pending; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX tasks_pending ON public.tasks USING btree (created_at) WHERE (pending AND (state < 2));


--
-- Name: tasks_retry; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX tasks_retry ON public.tasks USING btree (retry_at) WHERE (retry_at IS NOT NULL);


--
-- PostgreSQL database dump complete
--


